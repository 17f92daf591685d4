#!/usr/bin/env python
"""Convert a Hugging Face transformers MaskFormer (Swin or ResNet backbone) into maskformer_d2.

    python tools/convert-hf-maskformer-to-d2.py facebook/maskformer-swin-base-ade out/maskformer-swin-base-ade
    python demo/demo.py --config-file out/maskformer-swin-base-ade/config.yaml --input photo.jpg --output vis/

SOURCE is a folder written by ``save_pretrained`` or a hub id (downloaded by transformers into its
cache, or read from the cache when offline). OUTPUT_DIR receives ``model_final.safetensors`` and
``config.yaml``; the config's MODEL.WEIGHTS points at the weights, and its DATASETS name the
registered dataset whose class names equal the model's labels (empty when none does).
SOURCE is read as untrusted: its JSON files are checked field by field, code it ships is never
run (a config with auto_map is refused), and a pytorch_model.bin is read with weights_only
(full pickle only with --allow-unsafe-pickle); a problem ends in one line and exit status 1,
with nothing written to OUTPUT_DIR.
Mask2Former models: tools/convert-hf-mask2former-to-d2.py.
"""
import sys


def main(argv=None) -> int:
    from maskformer_d2.convert.hf import import_hf_maskformer
    from maskformer_d2.convert.hf import main as run_importer

    return run_importer(argv, __doc__, import_hf_maskformer, "MaskFormer")


if __name__ == "__main__":
    sys.exit(main())
