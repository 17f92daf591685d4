"""Dataset mappers, selected by name with INPUT.DATASET_MAPPER_NAME.

Names of the official MaskFormer ("mask_former_semantic", "mask_former_panoptic", "detr_panoptic")
and Mask2Former ("mask_former_instance", "coco_instance_lsj", "coco_panoptic_lsj") code bases are
kept. Another project adds its own with ``@register_mapper("my_name")``.
"""
from typing import Callable, Dict, Type, TypeVar

from detectron2.config import CfgNode

from . import mask_former_mappers
from .augmentation import AUGMENTATION_STYLES, RandomChoice, build_augmentations
from .mask_former_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    DETRPanopticDatasetMapper,
    MaskFormerDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .targets import UnreadableFileError

__all__ = [
    "DATASET_MAPPERS",
    "register_mapper",
    "build_mapper",
    "build_augmentations",
    "AUGMENTATION_STYLES",
    "RandomChoice",
    "UnreadableFileError",
    *mask_former_mappers.__all__,
]

#: INPUT.DATASET_MAPPER_NAME -> mapper class (built as ``cls(cfg, is_train=...)``)
DATASET_MAPPERS: Dict[str, Type] = {}

_M = TypeVar("_M", bound=Type)


def register_mapper(name: str) -> Callable[[_M], _M]:
    """Class decorator: make a mapper selectable as INPUT.DATASET_MAPPER_NAME ``name``."""

    def deco(cls: _M) -> _M:
        if name in DATASET_MAPPERS and DATASET_MAPPERS[name] is not cls:
            raise KeyError(f"a dataset mapper named {name!r} is already registered "
                           f"({DATASET_MAPPERS[name].__qualname__})")
        DATASET_MAPPERS[name] = cls
        return cls

    return deco


for _name, _cls in [
    ("mask_former_semantic", MaskFormerSemanticDatasetMapper),
    ("mask_former_panoptic", MaskFormerPanopticDatasetMapper),
    ("mask_former_instance", MaskFormerInstanceDatasetMapper),
    ("detr_panoptic", DETRPanopticDatasetMapper),
    ("coco_panoptic_lsj", COCOPanopticLSJDatasetMapper),
    ("coco_instance_lsj", COCOInstanceLSJDatasetMapper),
]:
    register_mapper(_name)(_cls)


def build_mapper(cfg: CfgNode, is_train: bool = True):
    """The mapper named by INPUT.DATASET_MAPPER_NAME, built from ``cfg``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME {name!r} is not a known dataset mapper; known: "
            f"{sorted(DATASET_MAPPERS)} (register another with "
            f"maskformer_d2.data.register_mapper)")
    return DATASET_MAPPERS[name](cfg, is_train=is_train)
