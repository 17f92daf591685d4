#!/usr/bin/env python
"""The quickstart job: MaskFormer (or Mask2Former) on the built-in shapes dataset, end to end,
on a CPU.

1. generates the dataset once (~/.cache/maskformer_d2/shapes, or $MASKFORMER_D2_CACHE);
2. trains configs/shapes/maskformer_R18_shapes.yaml (or the --config-file given, e.g.
   configs/shapes/mask2former_R18_shapes.yaml) from scratch with train_net.py's Trainer
   (:mod:`maskformer_d2.engine`);
3. evaluates one model for all three tasks (SemSegEvaluator, COCOEvaluator, COCOPanopticEvaluator);
4. prints a table, writes OUTPUT_DIR/quickstart_metrics.json and renders a few validation images
   (semantic | instance | panoptic side by side) to OUTPUT_DIR/vis/.

    python scripts/quickstart.py [--config-file configs/shapes/...yaml] [--output-dir output/quickstart]
                                 [--num-vis 4] [KEY VALUE ...]
"""
import argparse
import json
import os
import sys
import time
from typing import Dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shapes", "maskformer_R18_shapes.yaml")


def summary(results: Dict) -> Dict[str, float]:
    """The headline numbers of the three evaluators."""
    return {
        "mIoU": results["sem_seg"]["mIoU"],
        "mask AP": results["segm"]["AP"],
        "PQ": results["panoptic_seg"]["PQ"],
        "PQ_th": results["panoptic_seg"]["PQ_th"],
        "PQ_st": results["panoptic_seg"]["PQ_st"],
    }


def render(cfg, out_dir: str, num: int) -> list:
    """Draws ``num`` validation images with the trained model; returns the written paths."""
    import cv2
    from detectron2.data import DatasetCatalog

    from maskformer_d2.data.io import read_image
    from maskformer_d2.visualization import VisualizationDemo

    demo = VisualizationDemo(cfg, task="all")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:num]:
        _, vis = demo.run_on_image(read_image(d["file_name"], format="BGR"))
        path = os.path.join(out_dir, os.path.basename(d["file_name"]))
        cv2.imwrite(path, vis[:, :, ::-1])
        paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", default=CONFIG, help="a shapes recipe (default: %(default)s)")
    ap.add_argument("--output-dir", default=os.path.join(REPO, "output", "quickstart"))
    ap.add_argument("--num-vis", type=int, default=4)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = ap.parse_args()

    from detectron2.engine import default_argument_parser

    from maskformer_d2.data import prepare_shapes
    from maskformer_d2.engine import build_cfg
    from maskformer_d2.engine import main as train_and_evaluate

    targs = default_argument_parser().parse_args(
        ["--config-file", args.config_file, "OUTPUT_DIR", args.output_dir, *args.opts])
    cfg = build_cfg(targs)
    start = time.perf_counter()
    prepare_shapes(cfg)
    t_data = time.perf_counter() - start
    start = time.perf_counter()
    results = train_and_evaluate(targs)  # trains, then evaluates on DATASETS.TEST
    t_train = time.perf_counter() - start
    numbers = summary(results)

    cfg.MODEL.WEIGHTS = os.path.join(args.output_dir, "model_final.pth")
    vis = render(cfg, os.path.join(args.output_dir, "vis"), args.num_vis)

    record = {"metrics": numbers, "data_seconds": round(t_data, 1), "train_and_eval_seconds": round(t_train, 1),
              "max_iter": cfg.SOLVER.MAX_ITER, "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
              "rendered": vis, "full_results": results}
    with open(os.path.join(args.output_dir, "quickstart_metrics.json"), "w") as f:
        json.dump(record, f, indent=2, default=float)

    print("\nmaskformer_d2 quickstart (shapes_panoptic_val, one model, three tasks)")
    print("| " + " | ".join(numbers) + " |")
    print("|" + "|".join("---" for _ in numbers) + "|")
    print("| " + " | ".join(f"{v:.1f}" for v in numbers.values()) + " |")
    print(f"data {t_data:.0f}s, train + eval {t_train:.0f}s ({cfg.SOLVER.MAX_ITER} iterations)")
    print(f"metrics: {os.path.join(args.output_dir, 'quickstart_metrics.json')}")
    print(f"renderings: {', '.join(vis)}")
    print("try the demo on your own pictures:\n  .venv/bin/python demo/demo.py --config-file "
          f"{os.path.relpath(args.config_file, REPO)} --input your.jpg --output out/ --task all "
          f"--opts MODEL.WEIGHTS {os.path.relpath(cfg.MODEL.WEIGHTS, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
