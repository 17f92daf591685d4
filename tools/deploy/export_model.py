#!/usr/bin/env python
"""Export the network of a MaskFormer config to ONNX or TorchScript.

    python tools/deploy/export_model.py --config-file CFG --format onnx --output DIR \\
        [--opts MODEL.WEIGHTS model_final.pth ...]

Writes DIR/model.onnx (or DIR/model.ts) and DIR/config.yaml (the config it came from), each
whole or not at all, and prints the input and output names and shapes. The network takes
(B, 3, H, W) normalised images padded to a multiple of the size divisibility (H, W dynamic) and
returns pred_logits (B, Q, K+1) and pred_masks (B, Q, H/4, W/4); run it with
``demo/demo.py --onnx DIR/model.onnx`` or ``MaskFormerPredictor(cfg, exported=...)``, which keep
our resizing and post-processing. A model.ts is a program (loading TorchScript can run code from
the file), so loading one needs ``--allow-unsafe-pickle`` / ``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``.
"""
import argparse
import logging
import os
import sys
import warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True, metavar="FILE")
    ap.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ap.add_argument("--output", required=True, metavar="DIR")
    ap.add_argument("--height", type=int, default=256, help="example input height (rounded up to "
                    "the size divisibility; the export accepts other sizes too)")
    ap.add_argument("--width", type=int, default=320, help="example input width (likewise)")
    ap.add_argument("--allow-unsafe-pickle", action="store_true",
                    help="load MODEL.WEIGHTS files that hold arbitrary Python objects (trusted files only)")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's own deprecations
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import torch
        from detectron2.modeling import build_model

        from maskformer_d2.checkpoint import MaskFormerCheckpointer
        from maskformer_d2.checkpoint.atomic import write_atomically
        from maskformer_d2.config import load_config
        from maskformer_d2.deploy import export_onnx, export_torchscript
        from maskformer_d2.deploy.export import INPUT_NAME, example_input

        if args.allow_unsafe_pickle:
            from maskformer_d2.checkpoint.safe_load import allow_unsafe_pickle
            allow_unsafe_pickle()
        cfg = load_config(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"], opts_name="--opts")
        config_text = cfg.dump()  # before anything is written: a config that cannot be dumped writes nothing
        model = build_model(cfg).eval()
        if cfg.MODEL.WEIGHTS:
            MaskFormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        else:
            print("warning: MODEL.WEIGHTS is empty: exporting random weights", file=sys.stderr)
        os.makedirs(args.output, exist_ok=True)
        name = "model.onnx" if args.format == "onnx" else "model.ts"
        path = os.path.join(args.output, name)
        example = example_input(model, args.height, args.width)
        (export_onnx if args.format == "onnx" else export_torchscript)(model, path, example)
        write_atomically(os.path.join(args.output, "config.yaml"), lambda f: f.write(config_text.encode()))
        with torch.no_grad():
            outputs = model.network(example)
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        print(f"wrote {path} and {os.path.join(args.output, 'config.yaml')}")
        fixed = getattr(model, "fixed_input_size", None)
        sizes = (f"H x W fixed at {fixed[0]} x {fixed[1]} (smaller images padded)" if fixed is not None
                 else f"H and W multiples of {max(int(model.size_divisibility), 1)}")
        print(f"input  {INPUT_NAME}: float32 (B, 3, H, W), normalised, {sizes} "
              f"(example {tuple(example.shape)})")
        print(f"output pred_logits: float32 (B, {logits.shape[1]}, {logits.shape[2]})")
        print(f"output pred_masks:  float32 (B, {masks.shape[1]}, H/4, W/4) (example {tuple(masks.shape)})")
        return 0
    except Exception as e:  # one line; the exporter's own message says which part failed
        from maskformer_d2.errors import first_line
        print(f"export_model: error: {first_line(e) or type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
