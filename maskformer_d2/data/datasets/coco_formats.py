"""Reading and writing the COCO-style annotation formats shared by our datasets and prepare scripts.

* :func:`load_panoptic_json`: COCO-panoptic json + PNGs (+ semantic PNGs) -> detectron2 dicts;
  category ids become contiguous ids (d2's convention, "isthing" added).
* :func:`mask_to_annotation`: a binary mask -> COCO RLE, area and bbox (what instance and panoptic
  annotations store).
"""
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "load_panoptic_json",
    "mask_bbox",
    "mask_to_annotation",
    "convert_segment_category",
    "panoptic_segment_id",
]


def convert_segment_category(segment: Dict[str, Any], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Dataset category id -> contiguous id of one panoptic segment; adds "isthing" (in place)."""
    cat = segment["category_id"]
    things = meta["thing_dataset_id_to_contiguous_id"]
    segment["isthing"] = cat in things
    segment["category_id"] = things[cat] if cat in things else (
        meta["stuff_dataset_id_to_contiguous_id"][cat])
    return segment


def load_panoptic_json(json_file: str, image_dir: str, panoptic_dir: str,
                       sem_seg_dir: Optional[str], meta: Dict[str, Any],
                       image_ext: str = ".jpg") -> List[Dict[str, Any]]:
    """Load a COCO-panoptic dataset into detectron2 dicts.

    Args:
        json_file: the panoptic json ("images", "annotations" with "segments_info").
        image_dir: folder of the images, named like the panoptic PNGs with ``image_ext``.
        panoptic_dir: folder of the panoptic PNGs.
        sem_seg_dir: folder of semantic PNGs named like the panoptic PNGs, or None.
        meta: with "thing_dataset_id_to_contiguous_id" and "stuff_dataset_id_to_contiguous_id".
    Returns:
        one dict per annotated image: "file_name", "image_id", "height"/"width" (when the json
        has them), "pan_seg_file_name", "sem_seg_file_name" (with ``sem_seg_dir``) and
        "segments_info" with contiguous "category_id" and "isthing".
    """
    with open(json_file) as f:
        info = json.load(f)
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in info.get("images", [])}
    dicts = []
    for ann in info["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        d = {
            "file_name": os.path.join(image_dir, stem + image_ext),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_dir, ann["file_name"]),
            "segments_info": [convert_segment_category(s, meta) for s in ann["segments_info"]],
        }
        height, width = sizes.get(ann["image_id"], (None, None))
        if height is not None and width is not None:
            d["height"], d["width"] = height, width
        if sem_seg_dir is not None:
            d["sem_seg_file_name"] = os.path.join(sem_seg_dir, ann["file_name"])
        dicts.append(d)
    if not dicts:
        raise ValueError(f"{json_file} has no annotations")
    return dicts


def mask_bbox(mask: np.ndarray) -> List[int]:
    """Tight [x, y, w, h] of a non-empty (H, W) mask, in pixels (COCO's convention)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def mask_to_annotation(mask: np.ndarray) -> Dict[str, Any]:
    """A non-empty (H, W) binary mask -> {"segmentation": compressed RLE (str counts), "area",
    "bbox"} as COCO instance annotations store them."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"segmentation": rle, "area": int(mask.sum()), "bbox": mask_bbox(mask)}


def panoptic_segment_id(category: int, index: int) -> int:
    """The id we give the ``index``-th (from 1) segment of contiguous class ``category`` in a
    panoptic PNG: ``(category + 1) * 1000 + index``. Unique per image, never 0 (void), readable,
    and deterministic (panopticapi's IdGenerator draws random colours instead)."""
    if not 1 <= index < 1000:
        raise ValueError(f"segment index {index} of category {category} is outside [1, 1000)")
    return (category + 1) * 1000 + index
