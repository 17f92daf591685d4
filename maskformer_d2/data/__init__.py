"""Data: the image reader, dataset mappers (selected by INPUT.DATASET_MAPPER_NAME), dataset
registration and the metadata the model and tools read.

Importing this package registers every dataset name (nothing is read until a dataset is used).
"""
from . import (
    datasets,  # noqa: F401  (registers the datasets)
    mappers,
)
from .datasets import prepare_shapes, register_shapes
from .io import ImageReadError, read_image
from .mappers import *  # noqa: F401,F403  (re-exported: see mappers.__all__)
from .metadata import display_metadata, thing_ids_from_metadata, train_ignore_label

__all__ = [
    *mappers.__all__,
    "prepare_shapes",
    "register_shapes",
    "ImageReadError",
    "read_image",
    "display_metadata",
    "thing_ids_from_metadata",
    "train_ignore_label",
]
