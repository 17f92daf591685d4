"""The transformer-predictor registry: MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME -> module."""
from detectron2.utils.registry import Registry
from torch import nn

from ...registry import lookup

__all__ = ["TRANSFORMER_PREDICTOR_REGISTRY", "build_transformer_predictor"]

TRANSFORMER_PREDICTOR_REGISTRY = Registry("TRANSFORMER_PREDICTOR")
TRANSFORMER_PREDICTOR_REGISTRY.__doc__ = """
Registry for transformer predictors: modules built as ``cls(cfg, in_channels, mask_classification)``
whose ``forward(x, mask_features)`` returns MaskFormer's output dict
(``pred_logits``, ``pred_masks`` and optionally ``aux_outputs``).
"""


def build_transformer_predictor(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    """Build the predictor named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``.

    Args:
        in_channels: channels of the feature map the predictor attends to.
        mask_classification: also predict a class per query (False: masks only, as in the
            per-pixel baseline+).
    """
    cls = lookup(TRANSFORMER_PREDICTOR_REGISTRY, cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME,
                 "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "TRANSFORMER_PREDICTOR_REGISTRY")
    return cls(cfg, in_channels, mask_classification)
