"""The transformer-predictor registry: MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME -> module."""
from typing import Any, Dict

from detectron2.utils.registry import Registry
from torch import nn

from ...registry import lookup

__all__ = ["TRANSFORMER_PREDICTOR_REGISTRY", "build_transformer_predictor", "query_predictor_args"]

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


def query_predictor_args(cfg, in_channels: int, mask_classification: bool) -> Dict[str, Any]:
    """The ``from_config`` arguments MaskFormer's and Mask2Former's query predictors share: Q queries
    of HIDDEN_DIM with NHEADS attention heads, DIM_FEEDFORWARD, DEC_LAYERS, PRE_NORM, a K + 1 class
    head, MASK_DIM mask embeddings and the input projection setting."""
    mf = cfg.MODEL.MASK_FORMER
    return {
        "in_channels": in_channels,
        "mask_classification": mask_classification,
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "hidden_dim": mf.HIDDEN_DIM,
        "num_queries": mf.NUM_OBJECT_QUERIES,
        "nheads": mf.NHEADS,
        "dim_feedforward": mf.DIM_FEEDFORWARD,
        "dec_layers": mf.DEC_LAYERS,
        "pre_norm": mf.PRE_NORM,
        "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
    }
