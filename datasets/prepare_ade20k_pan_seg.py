#!/usr/bin/env python3
"""Build COCO-panoptic annotations of ADE20K-150 from its semantic and instance annotations.

Reads   ADEChallengeData2016/images/{training,validation}/*.jpg
        ADEChallengeData2016/annotations/{training,validation}/*.png     (0 = unlabeled, 1..150)
        ADEChallengeData2016/annotations_instance/{training,validation}/*.png
Writes  ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png   (RGB-encoded segment ids)
        ADEChallengeData2016/ade20k_panoptic_{train,val}.json    (category ids = contiguous ids)
        used by ade20k_panoptic_* (which also needs prepare_ade20k_sem_seg.py).

Stuff segments come from the semantic map (one per stuff class), thing segments from the instance
map (one per instance, painted over the stuff). Segment id = (category + 1) * 1000 + k.
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_ade20k_ins_seg import (  # noqa: E402
    ade20k_splits,
    image_entries,
    instance_class_map,
    instance_segments,
    write_coco_json,
)
from prepare_utils import parser, run  # noqa: E402

logger = logging.getLogger("prepare_ade20k_pan_seg")


def panoptic_annotation(semantic: np.ndarray, ins_png: np.ndarray, is_thing: List[bool],
                        class_map: Dict[int, int], source: str = ""
                        ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Panoptic RGB PNG and segments_info of one image.

    Args:
        semantic: (H, W) uint8 raw ADE labels (0 = unlabeled, k = class k - 1).
        ins_png: (H, W, 3) ADE instance PNG.
        is_thing: per ADE20K-150 class.
    """
    from panopticapi.utils import id2rgb

    from maskformer_d2.data.datasets.coco_formats import mask_bbox, panoptic_segment_id

    classes = semantic.astype(np.int64) - 1
    segments: List[Tuple[int, np.ndarray]] = [
        (int(c), classes == c) for c in np.unique(classes) if c >= 0 and not is_thing[c]]
    segments += instance_segments(ins_png, class_map, source)
    pan = np.zeros(semantic.shape, dtype=np.uint32)
    ids, count = [], {}
    for cls, mask in segments:  # things are painted last, over the stuff
        count[cls] = count.get(cls, 0) + 1
        ids.append((panoptic_segment_id(cls, count[cls]), cls))
        pan[mask] = ids[-1][0]
    segments_info = []
    for segment_id, cls in ids:
        mask = pan == segment_id
        if mask.any():
            segments_info.append({"id": segment_id, "category_id": cls, "iscrowd": 0,
                                  "area": int(mask.sum()), "bbox": mask_bbox(mask)})
    return id2rgb(pan), segments_info


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return parser(__doc__, "ADEChallengeData2016").parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    from maskformer_d2.data.datasets.builtin_meta import ade20k_150_categories

    args = parse_args(argv)
    categories = ade20k_150_categories()
    is_thing = [bool(c["isthing"]) for c in categories]
    class_map = instance_class_map()
    for split, base, (image_dir, semantic_dir, instance_dir) in ade20k_splits(
            args.root, ["annotations", "annotations_instance"]):
        out_dir = os.path.join(base, f"ade20k_panoptic_{split}")
        os.makedirs(out_dir, exist_ok=True)
        images, annotations = [], []
        for image in image_entries(image_dir):
            stem = image["id"]
            semantic = np.asarray(Image.open(os.path.join(semantic_dir, stem + ".png")))
            ins_path = os.path.join(instance_dir, stem + ".png")
            pan_rgb, segments_info = panoptic_annotation(
                semantic, np.asarray(Image.open(ins_path)), is_thing, class_map, ins_path)
            Image.fromarray(pan_rgb).save(os.path.join(out_dir, stem + ".png"))
            images.append(image)
            annotations.append({"image_id": stem, "file_name": stem + ".png",
                                "segments_info": segments_info})
        out = write_coco_json(base, f"ade20k_panoptic_{split}", images, annotations, categories)
        logger.info(f"{split}: {len(images)} images -> {out_dir}, {out}")
    return 0


if __name__ == "__main__":
    run(main)
