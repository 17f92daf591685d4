"""Moved to :mod:`maskformer_d2.data.mappers` (this path works until 0.2, with a warning)."""
from ..._deprecated import moved_names

__getattr__ = moved_names(
    __name__,
    "maskformer_d2.data.mappers",
    [
        "register_mapper", "build_mapper", "build_augmentations", "AUGMENTATION_STYLES",
        "RandomChoice", "MaskFormerDatasetMapper", "MaskFormerSemanticDatasetMapper",
        "MaskFormerPanopticDatasetMapper", "MaskFormerInstanceDatasetMapper",
        "DETRPanopticDatasetMapper", "COCOPanopticLSJDatasetMapper", "COCOInstanceLSJDatasetMapper",
    ],
)
