"""The pixel-decoder registry: MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME -> module."""
from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

from ...registry import lookup

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder", "head_input_shape"]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Registry for pixel decoders: modules built as ``cls(cfg, input_shape)`` (input_shape: the
backbone's ``Dict[str, ShapeSpec]``) with a method
``forward_features(features) -> (mask_features (B, MASK_DIM, H/4, W/4), transformer_encoder_features
or None[, multi_scale_features])``; the optional third output, a list of (B, C, h_l, w_l) maps
(coarsest first), is what Mask2Former's decoder reads (``TRANSFORMER_IN_FEATURE:
multi_scale_pixel_decoder``).
"""


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    cls = lookup(PIXEL_DECODER_REGISTRY, name, "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME",
                 "PIXEL_DECODER_REGISTRY")
    decoder = cls(cfg, input_shape)
    if not callable(getattr(decoder, "forward_features", None)):
        raise TypeError(
            f"pixel decoder {name!r} has no forward_features(features) method; a pixel decoder "
            "must return (mask_features, transformer_encoder_features or None[, multi_scale_features]) "
            "from it"
        )
    return decoder


def head_input_shape(cfg, input_shape: Dict[str, ShapeSpec]) -> Dict[str, ShapeSpec]:
    """The backbone outputs ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` names, or a KeyError naming the
    ones the backbone does not have."""
    wanted = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
    missing = [name for name in wanted if name not in input_shape]
    if missing:
        raise KeyError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs "
            f"{sorted(input_shape)}; set IN_FEATURES to a subset of them"
        )
    return {k: v for k, v in input_shape.items() if k in wanted}
