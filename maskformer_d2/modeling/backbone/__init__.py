"""Backbones MaskFormer adds to detectron2's BACKBONE_REGISTRY (ResNets come from detectron2)."""

from .swin import D2SwinTransformer

__all__ = ["D2SwinTransformer"]
