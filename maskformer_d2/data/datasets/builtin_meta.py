"""Class lists and metadata of the datasets MaskFormer reports on.

The class lists are facts of the official MaskFormer / Mask2Former registration code, stored as
JSON under ``categories/`` (each file names its source). The metadata conventions follow
detectron2 and the official code:

* ``stuff_classes``: the names of all K classes, indexed by contiguous id (what a semantic
  prediction's channel means; :class:`~detectron2.evaluation.SemSegEvaluator` needs it).
* ``thing_dataset_id_to_contiguous_id`` / ``stuff_dataset_id_to_contiguous_id``: dataset category
  id -> contiguous id; panoptic datasets map *every* class in the "stuff" dict so that the
  semantic evaluator can run on them as well.
"""
import copy
import functools
import json
import os
from typing import Any, Dict, List

from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, COCO_CATEGORIES

__all__ = [
    "load_categories",
    "ade20k_150_categories",
    "ade20k_full_meta",
    "cityscapes_instance_thing_ids",
    "coco_stuff_171_categories",
    "coco_stuff_10k_meta",
    "mapillary_vistas_meta",
    "mapillary_vistas_panoptic_meta",
    "ade20k_panoptic_meta",
    "ade20k_instance_meta",
    "coco_panoptic_with_sem_seg_meta",
]

CATEGORY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "categories")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> List[Dict[str, Any]]:
    path = os.path.join(CATEGORY_DIR, f"{name}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"class list {path} is missing; reinstall maskformer_d2 (pip install -e .) so that "
            f"its package data is there")
    with open(path) as f:
        return json.load(f)["categories"]


def load_categories(name: str) -> List[Dict[str, Any]]:
    """A copy of the class list ``categories/<name>.json`` (list of dicts, contiguous order)."""
    return copy.deepcopy(_load(name))


def ade20k_150_categories() -> List[Dict[str, Any]]:
    """ADE20K-150 ("SceneParsing") classes with "id" (= contiguous id), "name", "color", "isthing"."""
    return load_categories("ade20k_150")


def ade20k_full_meta() -> Dict[str, Any]:
    """ADE20K-full, 847 classes (labels are 16-bit, 65535 = ignore)."""
    return {"stuff_classes": [c["name"] for c in _load("ade20k_full_847")]}


def coco_stuff_171_categories() -> List[Dict[str, Any]]:
    """COCO-Stuff: the 80 COCO things (detectron2's ids, names, colors) then the 91 stuff classes."""
    things = [copy.deepcopy(c) for c in COCO_CATEGORIES if c["isthing"] == 1]
    return things + load_categories("coco_stuff_91")


def coco_stuff_10k_meta() -> Dict[str, Any]:
    cats = coco_stuff_171_categories()
    assert len(cats) == 171, len(cats)
    return {
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "stuff_classes": [c["name"] for c in cats],
    }


def mapillary_vistas_meta() -> Dict[str, Any]:
    """Mapillary Vistas v1.2 semantic: the 65 evaluated classes (label 65 = unlabeled = ignore)."""
    cats = [c for c in _load("mapillary_vistas_66") if c["evaluate"]]
    assert len(cats) == 65, len(cats)
    return {"stuff_classes": [c["readable"] for c in cats],
            "stuff_colors": [c["color"] for c in cats]}


def mapillary_vistas_panoptic_meta() -> Dict[str, Any]:
    """Mapillary Vistas v1.2 panoptic as registered by the official Mask2Former: the 65 evaluated
    classes, dataset id = label value + 1, the 37 with instance annotations are things.

    ``thing_classes`` repeats all 65 names (detectron2's visualizer indexes it by contiguous id).
    """
    cats = [c for c in _load("mapillary_vistas_66") if c["evaluate"]]
    assert len(cats) == 65, len(cats)
    names = [c["readable"] for c in cats]
    colors = [c["color"] for c in cats]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names[:],
        "stuff_colors": colors[:],
        "thing_dataset_id_to_contiguous_id": {
            i + 1: i for i, c in enumerate(cats) if c["instances"]},
        "stuff_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(cats))},
    }


def cityscapes_instance_thing_ids(thing_classes: List[str]) -> Dict[int, int]:
    """Cityscapes label id -> contiguous id of the instance classes ``thing_classes`` (detectron2's
    order), as detectron2's Cityscapes instance loader numbers them (person: 24 -> 0, ...)."""
    ids = {c["name"]: c["id"] for c in CITYSCAPES_CATEGORIES if c["isthing"]}
    missing = [name for name in thing_classes if name not in ids]
    if missing:
        raise ValueError(f"Cityscapes thing classes {missing} are not in detectron2's "
                         "CITYSCAPES_CATEGORIES")
    return {ids[name]: i for i, name in enumerate(thing_classes)}


def ade20k_panoptic_meta() -> Dict[str, Any]:
    """ADE20K-150 panoptic metadata as registered by the official MaskFormer.

    ``thing_classes`` repeats all 150 names (detectron2's visualizer indexes it by contiguous id).
    """
    cats = _load("ade20k_150")
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_colors": [c["color"] for c in cats],
        "stuff_classes": [c["name"] for c in cats],
        "stuff_colors": [c["color"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def ade20k_instance_meta() -> Dict[str, Any]:
    """ADE20K instance segmentation (Mask2Former): 100 thing classes, json ids = ADE-150 ids."""
    cats = _load("ade20k_instance_100")
    colors = {c["id"]: c["color"] for c in _load("ade20k_150")}
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_colors": [colors[c["id"]] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def coco_panoptic_with_sem_seg_meta() -> Dict[str, Any]:
    """COCO panoptic (133 classes, things first) with every class in the stuff map (Mask2Former)."""
    return {
        "thing_classes": [c["name"] for c in COCO_CATEGORIES if c["isthing"]],
        "thing_colors": [c["color"] for c in COCO_CATEGORIES if c["isthing"]],
        "stuff_classes": [c["name"] for c in COCO_CATEGORIES],
        "stuff_colors": [c["color"] for c in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)},
    }
