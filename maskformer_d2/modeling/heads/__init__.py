"""Sem-seg heads (registered in detectron2's SEM_SEG_HEADS_REGISTRY on import)."""
from .mask_former_head import MaskFormerHead
from .per_pixel_baseline import PerPixelBaselineHead, PerPixelBaselinePlusHead

__all__ = ["MaskFormerHead", "PerPixelBaselineHead", "PerPixelBaselinePlusHead"]
