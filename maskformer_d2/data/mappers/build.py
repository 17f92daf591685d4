"""The dataset-mapper registry: INPUT.DATASET_MAPPER_NAME -> mapper class.

The names of the official MaskFormer ("mask_former_semantic", "mask_former_panoptic",
"detr_panoptic") and Mask2Former ("mask_former_instance", "coco_instance_lsj",
"coco_panoptic_lsj") code bases are kept. Another project adds its own like a model part::

    @DATASET_MAPPER_REGISTRY.register()            # selectable as "MyMapper"
    class MyMapper: ...

    @DATASET_MAPPER_REGISTRY.register_as("my_name")  # or under another name
    class MyOtherMapper: ...
"""
from detectron2.config import CfgNode

from ...registry import NamedRegistry, lookup

__all__ = ["DATASET_MAPPER_REGISTRY", "register_mapper", "build_mapper"]

DATASET_MAPPER_REGISTRY = NamedRegistry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers: classes built as ``cls(cfg, is_train=...)`` whose instances map a
detectron2 dataset dict to model inputs (None to skip it in training).
"""


def register_mapper(name: str):
    """Class decorator: make a mapper selectable as INPUT.DATASET_MAPPER_NAME ``name``
    (the same as ``DATASET_MAPPER_REGISTRY.register_as(name)``)."""
    return DATASET_MAPPER_REGISTRY.register_as(name)


def build_mapper(cfg: CfgNode, is_train: bool = True):
    """The mapper named by INPUT.DATASET_MAPPER_NAME, built from ``cfg``."""
    cls = lookup(DATASET_MAPPER_REGISTRY, cfg.INPUT.DATASET_MAPPER_NAME, "INPUT.DATASET_MAPPER_NAME",
                 "DATASET_MAPPER_REGISTRY")
    return cls(cfg, is_train=is_train)
