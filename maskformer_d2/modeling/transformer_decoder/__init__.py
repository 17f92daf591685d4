"""Transformer predictors (the "transformer decoder" of MaskFormer) and their building blocks."""
from .masked_attention_decoder import MultiScaleMaskedTransformerDecoder
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer, TransformerEncoderOnly
from .transformer_predictor import (
    MLP,
    TRANSFORMER_PREDICTOR_REGISTRY,
    TransformerPredictor,
    build_transformer_predictor,
)

__all__ = [
    "PositionEmbeddingSine",
    "Transformer",
    "TransformerEncoderOnly",
    "MLP",
    "TRANSFORMER_PREDICTOR_REGISTRY",
    "TransformerPredictor",
    "build_transformer_predictor",
    "MultiScaleMaskedTransformerDecoder",
]
