#!/usr/bin/env python3
"""Build COCO-style instance annotations of ADE20K (100 thing classes, Mask2Former's benchmark).

Reads   ADEChallengeData2016/images/{training,validation}/*.jpg
        ADEChallengeData2016/annotations_instance/{training,validation}/*.png
        (channel 0 = instance class 1..100, channel 1 = instance id, 0 = none)
Writes  ADEChallengeData2016/ade20k_instance_{train,val}.json
        (RLE masks; category ids = ADE20K-150 contiguous ids, shared with the panoptic json),
        used by ade20k_instance_*.
"""
import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_utils import parser, require, run  # noqa: E402

logger = logging.getLogger("prepare_ade20k_ins_seg")
SPLITS = (("train", "training"), ("val", "validation"))
ADE20K_HOW = ("extract ADEChallengeData2016.zip and annotations_instance.tar "
              "(http://sceneparsing.csail.mit.edu/) into {root}")


def instance_class_map() -> Dict[int, int]:
    """Instance class (1..100, channel 0 of the instance PNGs) -> ADE20K-150 contiguous id."""
    from maskformer_d2.data.datasets.builtin_meta import load_categories

    return {c["instance_id"]: c["id"] for c in load_categories("ade20k_instance_100")}


def instance_segments(ins_png: np.ndarray, class_map: Dict[int, int], source: str = ""
                      ) -> List[Tuple[int, np.ndarray]]:
    """[(ADE20K-150 contiguous id, (H, W) bool mask)] of an ADE20K instance PNG, by instance id."""
    classes, ids = ins_png[:, :, 0], ins_png[:, :, 1]
    segments = []
    for inst in np.unique(ids):
        if inst == 0:
            continue
        mask = ids == inst
        cls = np.unique(classes[mask])
        if len(cls) != 1 or int(cls[0]) not in class_map:
            raise ValueError(f"{source}: instance {inst} has instance classes {cls.tolist()}; "
                             f"expected one of 1..100")
        segments.append((class_map[int(cls[0])], mask))
    return segments


def image_entry(image_path: str) -> Dict[str, Any]:
    with Image.open(image_path) as im:
        width, height = im.size
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return {"id": stem, "file_name": os.path.basename(image_path), "width": width, "height": height}


def ade20k_splits(root: str, annotations: Sequence[str]) -> Iterator[Tuple[str, str, List[str]]]:
    """For each split: its name ("train", "val"), the ADEChallengeData2016 folder, and the split's
    folders of images and of each of ``annotations`` (e.g. "annotations_instance"), checked to exist."""
    base = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in SPLITS:
        folders = [os.path.join(base, kind, dirname) for kind in ("images", *annotations)]
        require(folders, ADE20K_HOW.format(root=root))
        yield split, base, folders


def image_entries(image_dir: str) -> Iterator[Dict[str, Any]]:
    """COCO image entries (id = file stem) of the .jpg images of a folder, in file-name order."""
    for file_name in sorted(f for f in os.listdir(image_dir) if f.endswith(".jpg")):
        yield image_entry(os.path.join(image_dir, file_name))


def write_coco_json(base: str, name: str, images: List[Dict], annotations: List[Dict], categories: List[Dict]
                    ) -> str:
    """Write ``<base>/<name>.json`` (COCO: images, annotations, categories) and return its path."""
    path = os.path.join(base, name + ".json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return parser(__doc__, "ADEChallengeData2016").parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    from maskformer_d2.data.datasets.builtin_meta import load_categories
    from maskformer_d2.data.datasets.coco_formats import mask_to_annotation

    args = parse_args(argv)
    class_map = instance_class_map()
    categories = [{"id": c["id"], "name": c["name"]}
                  for c in load_categories("ade20k_instance_100")]
    for split, base, (image_dir, instance_dir) in ade20k_splits(args.root, ["annotations_instance"]):
        images, annotations = [], []
        for image in image_entries(image_dir):
            images.append(image)
            ins_path = os.path.join(instance_dir, image["id"] + ".png")
            ins_png = np.asarray(Image.open(ins_path))
            for cls, mask in instance_segments(ins_png, class_map, ins_path):
                annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                    "category_id": cls, "iscrowd": 0, **mask_to_annotation(mask)})
        out = write_coco_json(base, f"ade20k_instance_{split}", images, annotations, categories)
        logger.info(f"{split}: {len(images)} images, {len(annotations)} instances -> {out}")
    return 0


if __name__ == "__main__":
    run(main)
