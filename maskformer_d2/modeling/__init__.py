"""Importing this package registers every model part in its registry."""
from . import backbone, eomt, heads, pixel_decoder, transformer_decoder  # noqa: F401
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .meta_arch import MaskFormer
from .pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .transformer_decoder import TRANSFORMER_PREDICTOR_REGISTRY, build_transformer_predictor

__all__ = [
    "MaskFormer", "SetCriterion", "HungarianMatcher",
    "PIXEL_DECODER_REGISTRY", "build_pixel_decoder",
    "TRANSFORMER_PREDICTOR_REGISTRY", "build_transformer_predictor",
]
