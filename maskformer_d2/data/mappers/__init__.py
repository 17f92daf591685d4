"""Dataset mappers, selected by name with INPUT.DATASET_MAPPER_NAME (see :mod:`.build`)."""
from . import mask_former_mappers
from .augmentation import AUGMENTATION_STYLES, RandomChoice, build_augmentations
from .build import DATASET_MAPPER_REGISTRY, build_mapper, register_mapper
from .mask_former_mappers import *  # noqa: F401,F403  (see mask_former_mappers.__all__)

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "register_mapper",
    "build_mapper",
    "build_augmentations",
    "AUGMENTATION_STYLES",
    "RandomChoice",
    *mask_former_mappers.__all__,
]
