#!/usr/bin/env python3
"""Convert ADE20K-full (ADE20K_2021_17_01) to the 847-class semantic segmentation benchmark.

Reads   ADE20K_2021_17_01/index_ade20k.pkl and the images / *_seg.png it lists
Writes  ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg   (shorter side <= 512)
        ADE20K_2021_17_01/annotations_detectron2/{training,validation}/*.tif
        (uint16: 0..846 = class, 65535 = unlabeled), used by ade20k_full_sem_seg_*.

The 847 classes and their ADE object ids are in maskformer_d2/data/datasets/categories/.
"""
import argparse
import logging
import os
import pickle
import sys
from typing import Dict, List, Optional

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_utils import parser, require, run  # noqa: E402

logger = logging.getLogger("prepare_ade20k_full_sem_seg")
IGNORE = 65535
MAX_SHORT_SIDE = 512


def object_class_mask(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE20K *_seg.png (H, W, 3) -> (H, W) int32 object class: R / 10 * 256 + G."""
    r = seg_rgb[:, :, 0].astype(np.int32)
    g = seg_rgb[:, :, 1].astype(np.int32)
    return (r // 10) * 256 + g


def shrink(image: np.ndarray, labels: np.ndarray):
    """Resize so that the shorter side is at most 512 (bilinear image, nearest labels)."""
    h, w = labels.shape
    if min(h, w) <= MAX_SHORT_SIDE:
        return image, labels
    if w >= h:
        h_new, w_new = MAX_SHORT_SIDE, round(w / float(h) * MAX_SHORT_SIDE)
    else:
        h_new, w_new = round(h / float(w) * MAX_SHORT_SIDE), MAX_SHORT_SIDE
    return (cv2.resize(image, (w_new, h_new), interpolation=cv2.INTER_LINEAR),
            cv2.resize(labels, (w_new, h_new), interpolation=cv2.INTER_NEAREST))


def to_train_ids(labels: np.ndarray, id_map: Dict[int, int]) -> np.ndarray:
    """ADE object classes -> uint16 contiguous ids (65535 for classes outside the 847)."""
    out = np.full(labels.shape, IGNORE, dtype=np.uint16)
    for obj_id in np.unique(labels):
        if int(obj_id) in id_map:
            out[labels == obj_id] = id_map[int(obj_id)]
    return out


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return parser(__doc__, "ADE20K_2021_17_01").parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    from maskformer_d2.data.datasets.builtin_meta import load_categories

    args = parse_args(argv)
    base = os.path.join(args.root, "ADE20K_2021_17_01")
    index_file = os.path.join(base, "index_ade20k.pkl")
    require([index_file], "download ADE20K_2021_17_01 from "
                          "https://groups.csail.mit.edu/vision/datasets/ADE20K/")
    with open(index_file, "rb") as f:
        index = pickle.load(f)
    id_map = {c["id"]: i for i, c in enumerate(load_categories("ade20k_full_847"))}
    for split in ("training", "validation"):
        for kind in ("images_detectron2", "annotations_detectron2"):
            os.makedirs(os.path.join(base, kind, split), exist_ok=True)
    for n, (folder, file_name) in enumerate(zip(index["folder"], index["filename"])):
        split = "validation" if file_name.split("_")[1] == "val" else "training"
        image_path = os.path.join(args.root, folder, file_name)
        image = np.asarray(Image.open(image_path).convert("RGB"))
        seg = np.asarray(Image.open(image_path.replace(".jpg", "_seg.png")).convert("RGB"))
        image, labels = shrink(image, object_class_mask(seg))
        Image.fromarray(image).save(os.path.join(base, "images_detectron2", split, file_name))
        Image.fromarray(to_train_ids(labels, id_map)).save(
            os.path.join(base, "annotations_detectron2", split, file_name.replace(".jpg", ".tif")))
        if (n + 1) % 1000 == 0:
            logger.info(f"{n + 1} / {len(index['filename'])} images")
    logger.info(f"done: {base}/images_detectron2 and annotations_detectron2")
    return 0


if __name__ == "__main__":
    run(main)
