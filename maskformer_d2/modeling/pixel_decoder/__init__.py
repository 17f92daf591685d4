"""Pixel decoders: backbone features -> per-pixel embeddings (and, optionally, the features the
transformer predictor attends to). Importing this package registers the built-in ones."""
from .build import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .mask2former_pixel_decoder import MSDeformAttnPixelDecoder
from .maskformer_pixel_decoder import BasePixelDecoder, TransformerEncoderPixelDecoder

__all__ = [
    "PIXEL_DECODER_REGISTRY",
    "build_pixel_decoder",
    "BasePixelDecoder",
    "TransformerEncoderPixelDecoder",
    "MSDeformAttnPixelDecoder",
]
