"""Data: dataset mappers (selected by INPUT.DATASET_MAPPER_NAME) and dataset registration.

Importing this package registers every dataset name (nothing is read until a dataset is used).
"""
from . import datasets  # noqa: F401  (registers the datasets)
from .dataset_mappers import (
    DATASET_MAPPERS,
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    DETRPanopticDatasetMapper,
    MaskFormerDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    UnreadableFileError,
    build_augmentations,
    build_mapper,
    register_mapper,
)
from .datasets import prepare_shapes, register_shapes

__all__ = [
    "DATASET_MAPPERS",
    "build_mapper",
    "register_mapper",
    "build_augmentations",
    "UnreadableFileError",
    "MaskFormerDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "DETRPanopticDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "COCOInstanceLSJDatasetMapper",
    "prepare_shapes",
    "register_shapes",
]
