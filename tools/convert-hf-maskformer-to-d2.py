#!/usr/bin/env python
"""Convert a Hugging Face transformers MaskFormer (Swin or ResNet backbone) into maskformer_d2.

    python tools/convert-hf-maskformer-to-d2.py facebook/maskformer-swin-base-ade out/maskformer-swin-base-ade
    python demo/demo.py --config-file out/maskformer-swin-base-ade/config.yaml --input photo.jpg --output vis/

SOURCE is a folder written by ``save_pretrained`` or a hub id (downloaded by transformers into its
cache, or read from the cache when offline). OUTPUT_DIR receives ``model_final.pth`` and
``config.yaml``; the config's MODEL.WEIGHTS points at the weights, and its DATASETS name the
registered dataset whose class names equal the model's labels (empty when none does).
"""
import argparse
import logging
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="HF MaskFormer: save_pretrained folder or hub id")
    ap.add_argument("output_dir", help="folder for model_final.pth and config.yaml")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from maskformer_d2.errors import first_line
    from maskformer_d2.convert.hf import HFImportError, import_hf_maskformer

    try:
        weights, config = import_hf_maskformer(args.source, args.output_dir)
    except HFImportError as e:
        print(f"error: {args.source}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # not found locally nor on the hub / in the cache
        reason = first_line(e) or type(e).__name__
        print(f"error: {args.source}: cannot load a Hugging Face MaskFormer ({reason})", file=sys.stderr)
        return 1
    print(f"wrote {weights}\nwrote {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
