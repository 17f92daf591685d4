#!/usr/bin/env python
"""train_net.py for your own data: register your datasets, then train, evaluate and draw with
maskformer_d2 (a walk-through: docs/custom_datasets.md).

    python docs/examples/custom_datasets.py --config-file CFG [train_net.py's flags] [KEY VALUE ...]
    python docs/examples/custom_datasets.py demo --config-file CFG --input IMAGE ... --output DIR [--opts ...]

Copy it next to your data, set CATEGORIES to your classes and the paths in register_my_datasets()
to your layout. The datasets are registered when this file is imported, so the worker processes
that ``--num-gpus N`` starts (which import it again) know them too.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import cv2
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg, register_coco_instances, register_coco_panoptic

from maskformer_d2.config import load_config
from maskformer_d2.data import read_image
from maskformer_d2.engine import cli
from maskformer_d2.visualization import VisualizationDemo

# Your classes, as the "categories" of a COCO(-panoptic) json: its id in your annotation files,
# a name, and whether it is a countable thing (1) or amorphous stuff (0).
CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1},
    {"id": 2, "name": "square", "isthing": 1},
    {"id": 3, "name": "triangle", "isthing": 1},
    {"id": 4, "name": "star", "isthing": 1},
    {"id": 5, "name": "sky", "isthing": 0},
    {"id": 6, "name": "grass", "isthing": 0},
    {"id": 7, "name": "wall", "isthing": 0},
]


def category_metadata(categories: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The metadata MaskFormer reads: one class space of contiguous ids 0..N-1, things first
    (0..T-1, which detectron2's COCOEvaluator requires), each group in the order of its ids."""
    things = sorted((c for c in categories if c["isthing"]), key=lambda c: c["id"])
    stuff = sorted((c for c in categories if not c["isthing"]), key=lambda c: c["id"])
    every = things + stuff
    return {
        "thing_classes": [c["name"] for c in things],
        "stuff_classes": [c["name"] for c in every],  # every class: semantic output is over all N
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(every)},
    }


def register_semantic(name: str, image_root: str, sem_seg_root: str, classes: Sequence[str],
                      ignore_label: int = 255, image_ext: str = "jpg") -> None:
    """Images + label PNGs of the same names (pixel value i = classes[i], ignore_label = unlabelled)."""
    DatasetCatalog.register(
        name, lambda: load_sem_seg(sem_seg_root, image_root, gt_ext="png", image_ext=image_ext))
    MetadataCatalog.get(name).set(
        stuff_classes=list(classes), ignore_label=ignore_label, evaluator_type="sem_seg",
        image_root=image_root, sem_seg_root=sem_seg_root)


def register_instances(name: str, json_file: str, image_root: str) -> None:
    """A COCO instance json (polygons or RLE; "categories" = the things) + its images."""
    meta = category_metadata(CATEGORIES)
    register_coco_instances(name, {k: meta[k] for k in ("thing_classes", "thing_dataset_id_to_contiguous_id")},
                            json_file, image_root)


def register_panoptic(name: str, image_root: str, panoptic_root: str, panoptic_json: str,
                      instances_json: Optional[str] = None) -> None:
    """A COCO-panoptic json + PNGs (images: .jpg, named like the PNGs); with ``instances_json``
    (the things as COCO instances) the instance output is evaluated too."""
    register_coco_panoptic(name, category_metadata(CATEGORIES), image_root, panoptic_root,
                           panoptic_json, instances_json)


def register_my_datasets(root: str) -> None:
    """my_sem_seg_*, my_instance_* and my_panoptic_* (train and val) under ``root``. Registration
    reads nothing: a dataset is loaded when a run first uses it."""
    for split in ("train", "val"):
        images = os.path.join(root, "images", split)
        register_semantic(f"my_sem_seg_{split}", images, os.path.join(root, "sem_seg", split),
                          category_metadata(CATEGORIES)["stuff_classes"])
        instances = os.path.join(root, "annotations", f"instances_{split}.json")
        register_instances(f"my_instance_{split}", instances, images)
        register_panoptic(f"my_panoptic_{split}", images, os.path.join(root, "panoptic", split),
                          os.path.join(root, "annotations", f"panoptic_{split}.json"), instances)


register_my_datasets(os.path.expanduser(os.environ.get("MY_DATASET", "datasets/my_dataset")))


def demo(argv: Sequence[str]) -> int:
    """Draw a trained model's output on images, with your class names (demo/demo.py does the
    same for the datasets maskformer_d2 knows)."""
    parser = argparse.ArgumentParser(prog="custom_datasets.py demo")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True, help="folder for <image name>.png")
    parser.add_argument("--task", default=None, help="semantic, instance, panoptic or all (default: the config's)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="instances scoring less are not drawn")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE pairs, e.g. MODEL.WEIGHTS")
    args = parser.parse_args(argv)
    visualizer = VisualizationDemo(load_config(args.config_file, args.opts), task=args.task,
                                   confidence_threshold=args.confidence_threshold)
    os.makedirs(args.output, exist_ok=True)
    for path in args.input:
        _, rendering = visualizer.run_on_image(read_image(path, format="BGR"))  # rendering: RGB
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        cv2.imwrite(os.path.join(args.output, name), rendering[:, :, ::-1])
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        return demo(argv[1:])
    return cli(argv)  # train_net.py's command line: training, --eval-only, --resume, --num-gpus


if __name__ == "__main__":
    sys.exit(main())
