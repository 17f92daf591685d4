#!/usr/bin/env python3
"""Convert COCO-Stuff-10k v1.0 to detectron2's semantic segmentation layout (171 classes).

Reads   coco/coco_stuff_10k/imageLists/{train,test}.txt, images/*.jpg, annotations/*.mat
Writes  coco/coco_stuff_10k/images_detectron2/{train,test}/*.jpg
        coco/coco_stuff_10k/annotations_detectron2/{train,test}/*.png
        (label S of the .mat minus 2, so 1 = unlabeled becomes 255), used by
        coco_2017_{train,test}_stuff_10k_sem_seg.

The v1.0 .mat files are MATLAB v7.3 (HDF5, read with h5py and transposed); older MATLAB files are
read with scipy.
"""
import argparse
import logging
import os
import shutil
import sys
from typing import List, Optional

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_utils import parser, require, run  # noqa: E402

logger = logging.getLogger("prepare_coco_stuff_10k_v1.0_sem_seg")


def load_label_mat(path: str) -> np.ndarray:
    """The (H, W) label map "S" of a COCO-Stuff-10k annotation .mat file, as uint8."""
    try:
        import h5py
    except ImportError:
        h5py = None
    if h5py is not None and h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            return np.asarray(f["S"]).astype(np.uint8).T  # HDF5 stores MATLAB arrays transposed
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(path)["S"]).astype(np.uint8)
    except NotImplementedError as e:  # scipy cannot read v7.3
        raise RuntimeError(f"{path} is a MATLAB v7.3 file: pip install h5py") from e


def convert_labels(labels: np.ndarray) -> np.ndarray:
    """S -> class ids: S - 2 in uint8 (1, unlabeled, wraps to 255)."""
    return labels.astype(np.uint8) - np.uint8(2)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return parser(__doc__, "coco/coco_stuff_10k").parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    base = os.path.join(args.root, "coco", "coco_stuff_10k")
    for split in ("test", "train"):
        list_file = os.path.join(base, "imageLists", f"{split}.txt")
        require([list_file], "unzip cocostuff-10k-v1.0.zip (annotations/, imageLists/, images/) "
                             f"into {base}")
        with open(list_file) as f:
            names = [line.strip() for line in f if line.strip()]
        image_dir = os.path.join(base, "images_detectron2", split)
        label_dir = os.path.join(base, "annotations_detectron2", split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for name in names:
            image_path = os.path.join(image_dir, name + ".jpg")
            shutil.copyfile(os.path.join(base, "images", name + ".jpg"), image_path)
            labels = convert_labels(load_label_mat(os.path.join(base, "annotations", name + ".mat")))
            with Image.open(image_path) as im:
                size = (im.height, im.width)
            if labels.shape != size:
                raise ValueError(f"{name}: label map {labels.shape} does not match image {size}")
            Image.fromarray(labels).save(os.path.join(label_dir, name + ".png"))
        logger.info(f"{split}: {len(names)} images in {image_dir}")
    return 0


if __name__ == "__main__":
    run(main)
