"""Dataset registration. Importing this package registers (lazily, reading nothing):

* the official MaskFormer / Mask2Former datasets under ``$DETECTRON2_DATASETS``
  (:mod:`.builtin`; detectron2 itself registers ADE20K-150, Cityscapes and COCO);
* the built-in synthetic ``shapes_*`` datasets with default parameters (:mod:`.shapes`; call
  :func:`register_shapes` with a config to apply DATASETS.SHAPES.*).
"""
from . import builtin as _builtin
from .builtin_meta import load_categories
from .coco_formats import load_panoptic_json, mask_to_annotation
from .shapes import prepare_shapes, register_shapes, shapes_metadata, shapes_spec

__all__ = [
    "load_categories",
    "load_panoptic_json",
    "mask_to_annotation",
    "prepare_shapes",
    "register_shapes",
    "shapes_metadata",
    "shapes_spec",
]

_builtin.register_all(_builtin.dataset_root())
register_shapes()
