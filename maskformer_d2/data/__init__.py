"""Data: dataset mappers (selected by INPUT.DATASET_MAPPER_NAME) and dataset registration.

Importing this package registers every dataset name (nothing is read until a dataset is used).
"""
from . import datasets  # noqa: F401  (registers the datasets)
from . import dataset_mappers
from .dataset_mappers import *  # noqa: F401,F403  (re-exported: see dataset_mappers.__all__)
from .datasets import prepare_shapes, register_shapes

__all__ = [*dataset_mappers.__all__, "prepare_shapes", "register_shapes"]
