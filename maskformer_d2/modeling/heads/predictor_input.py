"""Which feature map the transformer predictor attends to (MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE),
shared by the MaskFormer head and the per-pixel baseline+ head."""
from typing import Dict, List, Optional, Union

from detectron2.layers import ShapeSpec
from torch import Tensor, nn

__all__ = [
    "TRANSFORMER_ENCODER",
    "PIXEL_EMBEDDING",
    "MULTI_SCALE",
    "predictor_in_channels",
    "predictor_input",
    "decode_and_predict",
]

# MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE value that selects the pixel decoder's encoder output
TRANSFORMER_ENCODER = "transformer_encoder"
# ... and the value that selects the per-pixel embeddings themselves (stride 4; the name and
# meaning of Mask2Former's MaskFormerHead)
PIXEL_EMBEDDING = "pixel_embedding"
# ... and the pixel decoder's multi-scale outputs (a list of maps, coarsest first: Mask2Former)
MULTI_SCALE = "multi_scale_pixel_decoder"


def predictor_in_channels(
    transformer_in_feature: str, input_shape: Dict[str, ShapeSpec], conv_dim: int, mask_dim: int
) -> int:
    """Channels of the feature map the transformer predictor attends to.

    Args:
        transformer_in_feature: a backbone feature name, "transformer_encoder" for the output of
            the pixel decoder's transformer encoder (which has ``conv_dim`` channels), or
            "pixel_embedding" for the per-pixel embeddings (``mask_dim`` channels, stride 4),
            "multi_scale_pixel_decoder" for the pixel decoder's multi-scale outputs (``conv_dim``).
        input_shape: the backbone's output shapes.
        conv_dim: MODEL.SEM_SEG_HEAD.CONVS_DIM.
        mask_dim: MODEL.SEM_SEG_HEAD.MASK_DIM.
    """
    if transformer_in_feature in (TRANSFORMER_ENCODER, MULTI_SCALE):
        return conv_dim
    if transformer_in_feature == PIXEL_EMBEDDING:
        return mask_dim
    if transformer_in_feature not in input_shape:
        raise KeyError(
            f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={transformer_in_feature!r} is neither "
            f"{TRANSFORMER_ENCODER!r}, {PIXEL_EMBEDDING!r}, {MULTI_SCALE!r} nor a backbone output {sorted(input_shape)}"
        )
    return input_shape[transformer_in_feature].channels


def predictor_input(
    transformer_in_feature: str,
    features: Dict[str, Tensor],
    transformer_encoder_features: Optional[Tensor],
    mask_features: Tensor,
    multi_scale_features: Optional[List[Tensor]] = None,
) -> Union[Tensor, List[Tensor]]:
    """The (B, C, h, w) map (or, for "multi_scale_pixel_decoder", the list of maps) the
    transformer predictor attends to (see :func:`predictor_in_channels`)."""
    if transformer_in_feature == MULTI_SCALE:
        if multi_scale_features is None:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={MULTI_SCALE!r} needs a pixel decoder "
                "with multi-scale outputs, e.g. MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME "
                "'MSDeformAttnPixelDecoder'")
        return multi_scale_features
    if transformer_in_feature == PIXEL_EMBEDDING:
        return mask_features
    if transformer_in_feature != TRANSFORMER_ENCODER:
        return features[transformer_in_feature]
    if transformer_encoder_features is None:
        raise ValueError(
            f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={TRANSFORMER_ENCODER!r} needs a pixel decoder "
            "with a transformer encoder; set MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME to "
            "'TransformerEncoderPixelDecoder' (or feed the predictor a backbone feature, e.g. 'res5')"
        )
    return transformer_encoder_features


def decode_and_predict(
    pixel_decoder: nn.Module,
    predictor: nn.Module,
    transformer_in_feature: str,
    features: Dict[str, Tensor],
) -> Dict[str, object]:
    """Run the pixel decoder, then the transformer predictor on its chosen input.

    In eval mode, when the pixel decoder can hand over its final conv uncomputed and the
    predictor can use that (``supports_deferred_mask_features`` / ``accepts_deferred_mask_features``),
    the per-pixel embeddings are left for the predictor to compose with its mask embeddings
    (see :mod:`maskformer_d2.modeling.mask_logits`).

    Returns:
        the predictor's output dict: "pred_masks" (B, Q, H/4, W/4), "pred_logits" (B, Q, K+1)
        with mask classification, "aux_outputs" with deep supervision.
    """
    deferred = (
        not predictor.training
        and transformer_in_feature != PIXEL_EMBEDDING
        and getattr(pixel_decoder, "supports_deferred_mask_features", False)
        and getattr(predictor, "accepts_deferred_mask_features", False)
    )
    if deferred:
        mask_features, encoder_features, *multi_scale = pixel_decoder.forward_features(
            features, deferred=True)
    else:
        mask_features, encoder_features, *multi_scale = pixel_decoder.forward_features(features)
    x = predictor_input(transformer_in_feature, features, encoder_features, mask_features,
                        multi_scale[0] if multi_scale else None)
    return predictor(x, mask_features)
