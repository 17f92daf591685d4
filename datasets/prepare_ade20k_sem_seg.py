#!/usr/bin/env python3
"""Convert ADE20K-150 (SceneParsing) labels to detectron2's convention.

Reads   ADEChallengeData2016/annotations/{training,validation}/*.png   (0 = unlabeled, 1..150)
Writes  ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png
        (0..149 = class, 255 = unlabeled), used by ade20k_sem_seg_* and ade20k_panoptic_*.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_utils import parser, require, run  # noqa: E402

logger = logging.getLogger("prepare_ade20k_sem_seg")
SPLITS = ("training", "validation")


def convert_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ADE labels -> class ids: unlabeled 0 becomes 255, class k becomes k - 1."""
    if labels.dtype != np.uint8:
        raise ValueError(f"ADE20K labels are uint8 PNGs, got {labels.dtype}")
    return labels - np.uint8(1)  # uint8 arithmetic wraps 0 to 255


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return parser(__doc__, "ADEChallengeData2016").parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    base = os.path.join(args.root, "ADEChallengeData2016")
    for split in SPLITS:
        src = os.path.join(base, "annotations", split)
        dst = os.path.join(base, "annotations_detectron2", split)
        require([src], "download ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ "
                       f"and extract it into {args.root}")
        os.makedirs(dst, exist_ok=True)
        files = sorted(f for f in os.listdir(src) if f.endswith(".png"))
        for name in files:
            labels = np.asarray(Image.open(os.path.join(src, name)))
            Image.fromarray(convert_labels(labels)).save(os.path.join(dst, name))
        logger.info(f"{split}: {len(files)} label maps written to {dst}")
    return 0


if __name__ == "__main__":
    run(main)
