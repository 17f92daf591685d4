"""Transformer predictors (the "transformer decoder" of MaskFormer and Mask2Former) and their
building blocks. Importing this package registers the built-in ones."""
from .build import TRANSFORMER_PREDICTOR_REGISTRY, build_transformer_predictor
from .mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder
from .maskformer_transformer_decoder import MLP, TransformerPredictor
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer, TransformerEncoderOnly

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
