"""Shapes registration: the six ``shapes_*`` names in detectron2's DatasetCatalog and
MetadataCatalog, whose loaders generate the dataset on first use."""
from typing import Any, Dict, List, Union

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from ..coco_formats import load_panoptic_json
from .spec import SPLITS, ShapesSpec, shapes_metadata, shapes_spec
from .writer import prepare_shapes


def _load_panoptic(spec: ShapesSpec, split: str, name: str) -> List[Dict[str, Any]]:
    prepare_shapes(spec.root, num_train=spec.num_train, num_val=spec.num_val,
                   image_size=spec.image_size, seed=spec.seed)
    p = spec.paths(split)
    dicts = load_panoptic_json(p["panoptic_json"], p["image_root"], p["panoptic_root"],
                               p["sem_seg_root"], shapes_metadata(), image_ext=".png")
    annotations = {d["image_id"]: d.get("annotations", [])
                   for d in load_coco_json(p["json_file"], p["image_root"], name)}
    for d in dicts:
        d["annotations"] = annotations[d["image_id"]]
    return dicts


def _load_instances(spec: ShapesSpec, split: str, name: str) -> List[Dict[str, Any]]:
    prepare_shapes(spec.root, num_train=spec.num_train, num_val=spec.num_val,
                   image_size=spec.image_size, seed=spec.seed)
    p = spec.paths(split)
    return load_coco_json(p["json_file"], p["image_root"], name)


def _load_semantic(spec: ShapesSpec, split: str) -> List[Dict[str, Any]]:
    prepare_shapes(spec.root, num_train=spec.num_train, num_val=spec.num_val,
                   image_size=spec.image_size, seed=spec.seed)
    p = spec.paths(split)
    return load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="png", image_ext="png")


def register_shapes(cfg_or_root: Union[CfgNode, str, None] = None, **overrides: Any) -> ShapesSpec:
    """(Re-)register the six shapes datasets for a config / root; generates nothing.

    Importing :mod:`maskformer_d2.data` registers them with the defaults; call this with the
    training config before building loaders so DATASETS.SHAPES.* apply. Returns the spec (its
    ``folder`` is where the data is, or will be).
    """
    spec = shapes_spec(cfg_or_root, **overrides)
    meta = shapes_metadata()
    things = {k: meta[k] for k in
              ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")}
    semantic = {k: meta[k] for k in
                ("stuff_classes", "stuff_colors", "stuff_dataset_id_to_contiguous_id",
                 "ignore_label")}
    for split in SPLITS:
        p = spec.paths(split)
        entries = {
            f"shapes_sem_seg_{split}": (
                lambda s=split: _load_semantic(spec, s),
                dict(image_root=p["image_root"], sem_seg_root=p["sem_seg_root"],
                     evaluator_type="sem_seg", **semantic)),
            f"shapes_instance_{split}": (
                lambda s=split, n=f"shapes_instance_{split}": _load_instances(spec, s, n),
                dict(image_root=p["image_root"], json_file=p["json_file"],
                     evaluator_type="coco", **things)),
            f"shapes_panoptic_{split}": (
                lambda s=split, n=f"shapes_panoptic_{split}": _load_panoptic(spec, s, n),
                dict(evaluator_type="coco_panoptic_seg", label_divisor=1000, **p, **meta)),
        }
        for name, (loader, metadata) in entries.items():
            if name in DatasetCatalog:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**metadata)
    return spec
