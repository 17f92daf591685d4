#!/usr/bin/env python
"""Convert a Hugging Face transformers EoMT (EomtForUniversalSegmentation) into maskformer_d2.

    python tools/convert-hf-eomt-to-d2.py tue-mps/coco_panoptic_eomt_large_640 out/eomt-l-coco
    python demo/demo.py --config-file out/eomt-l-coco/config.yaml --input photo.jpg --output vis/ --task panoptic

SOURCE is a folder written by ``save_pretrained`` or a hub id (downloaded by transformers into its
cache, or read from the cache when offline). OUTPUT_DIR receives ``model_final.safetensors`` and
``config.yaml`` (MODEL.META_ARCHITECTURE EoMT; MODEL.WEIGHTS points at the weights; DATASETS name
the registered dataset whose class names equal the model's labels, empty when none does).
"""
import sys


def main(argv=None) -> int:
    from maskformer_d2.convert.hf import main as run_importer
    from maskformer_d2.convert.hf_eomt import import_hf_eomt

    return run_importer(argv, __doc__, import_hf_eomt, "EoMT")


if __name__ == "__main__":
    sys.exit(main())
