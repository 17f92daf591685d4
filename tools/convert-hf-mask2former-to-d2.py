#!/usr/bin/env python
"""Convert a Hugging Face transformers Mask2Former (Swin or ResNet backbone) into maskformer_d2.

    python tools/convert-hf-mask2former-to-d2.py facebook/mask2former-swin-small-coco-panoptic out/m2f-swin-s-coco
    python demo/demo.py --config-file out/m2f-swin-s-coco/config.yaml --input photo.jpg --output vis/ --task panoptic

SOURCE is a folder written by ``save_pretrained`` or a hub id of a
``Mask2FormerForUniversalSegmentation`` (downloaded by transformers into its cache, or read from
the cache when offline). OUTPUT_DIR receives ``model_final.safetensors`` (official Mask2Former
tensor names) and ``config.yaml``; the config's MODEL.WEIGHTS points at the weights, and its
DATASETS name the registered dataset whose class names equal the model's labels (empty when none
does), with the output tasks of the matching official config (panoptic, instance or semantic).
SOURCE is read as untrusted: its JSON files are checked field by field, code it ships is never
run (a config with auto_map is refused), and a pytorch_model.bin is read with weights_only
(full pickle only with --allow-unsafe-pickle); a problem ends in one line and exit status 1,
with nothing written to OUTPUT_DIR.
"""
import sys


def main(argv=None) -> int:
    from maskformer_d2.convert.hf import main as run_importer
    from maskformer_d2.convert.hf_mask2former import import_hf_mask2former

    return run_importer(argv, __doc__, import_hf_mask2former, "Mask2Former")


if __name__ == "__main__":
    sys.exit(main())
