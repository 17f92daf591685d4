"""MaskFormer's transformer predictor: N queries -> N (class logits, mask embedding) pairs.

The mask of a query is the dot product of its mask embedding with every per-pixel embedding
produced by the pixel decoder.
"""
from typing import Dict, Optional, Union

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn
from torch.nn import functional as F

from ..mask_logits import DeferredProjection, mask_factors, mask_logits
from .build import TRANSFORMER_PREDICTOR_REGISTRY, query_predictor_args
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer

__all__ = ["MLP", "TransformerPredictor"]

class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's FFN): in -> hidden... -> out."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """(..., input_dim) -> (..., output_dim)"""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_PREDICTOR_REGISTRY.register()
class TransformerPredictor(nn.Module):
    """DETR decoder over one feature map, with a class head and a mask-embedding head per query.

    Parameter names match the official ``sem_seg_head.predictor.*``: ``transformer``,
    ``query_embed``, ``input_proj`` (absent when it would be an identity), ``class_embed`` (only
    with mask classification), ``mask_embed.layers.{0,1,2}``.
    """

    # forward() takes the pixel decoder's DeferredProjection as well as the embeddings themselves
    accepts_deferred_mask_features = True

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dropout: float,
        dim_feedforward: int,
        enc_layers: int,
        dec_layers: int,
        pre_norm: bool,
        deep_supervision: bool,
        mask_dim: int,
        enforce_input_project: bool = False,
    ):
        """
        Args:
            in_channels: channels of the feature map given to ``forward``.
            mask_classification: add ``class_embed`` and return ``pred_logits``.
            num_classes: K; the class head predicts K + 1 logits (the last one is "no object").
            hidden_dim: transformer width.
            num_queries: Q.
            nheads: attention heads.
            dropout: transformer dropout.
            dim_feedforward: width of the transformer feed-forward blocks.
            enc_layers: transformer encoder layers over the input features (0 in most configs).
            dec_layers: transformer decoder layers.
            pre_norm: pre-LayerNorm transformer layers instead of post-LayerNorm.
            deep_supervision: return the predictions of every decoder layer (``aux_outputs``).
            mask_dim: channels of the per-pixel embeddings (``mask_features``).
            enforce_input_project: use a 1x1 conv input projection even when
                ``in_channels == hidden_dim`` (otherwise it is an identity).
        """
        super().__init__()
        self.mask_classification = mask_classification
        self.deep_supervision = deep_supervision
        # eval mode: also predict from the earlier layers (as the official head does); a
        # meta-architecture that reads only the final prediction turns this off
        self.aux_outputs_in_eval = True
        self.num_queries = num_queries
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer = Transformer(
            d_model=hidden_dim,
            nhead=nheads,
            num_encoder_layers=enc_layers,
            num_decoder_layers=dec_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            normalize_before=pre_norm,
            return_intermediate_dec=deep_supervision,
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
            weight_init.c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Identity()
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool):
        mf = cfg.MODEL.MASK_FORMER
        return {
            **query_predictor_args(cfg, in_channels, mask_classification),
            "dropout": mf.DROPOUT,
            "enc_layers": mf.ENC_LAYERS,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }

    def forward(self, x: Tensor, mask_features: Union[Tensor, DeferredProjection]) -> Dict[str, object]:
        """
        Args:
            x: (B, in_channels, h, w) features the queries attend to (e.g. res5, stride 32).
            mask_features: (B, mask_dim, H/4, W/4) per-pixel embeddings from the pixel decoder,
                or their :class:`~maskformer_d2.modeling.mask_logits.DeferredProjection`.

        Returns:
            dict with
              "pred_logits": (B, Q, K+1) class logits (only with mask classification);
              "pred_masks": (B, Q, H/4, W/4) mask logits;
              in training, "mask_embed" (B, Q, mask_dim) and "mask_features", the factors of
                "pred_masks" (:func:`~maskformer_d2.modeling.mask_logits.mask_factors`);
              "aux_outputs": with deep supervision, one dict with the same keys per earlier
                decoder layer, in layer order (in eval mode only if ``aux_outputs_in_eval``).
        """
        # The official model attends without a padding mask (padded pixels included).
        pos = self.pe_layer(x)
        hs, _ = self.transformer(self.input_proj(x), None, self.query_embed.weight, pos)
        # hs: (L, B, Q, C), L = decoder layers with deep supervision, else 1
        if not (self.training or self.aux_outputs_in_eval):
            hs = hs[-1:]
        embed = self.mask_embed(hs)
        masks = mask_logits(embed, mask_features)
        logits = self.class_embed(hs) if self.mask_classification else None
        per_layer = [self._layer_output(logits, masks, i) for i in range(hs.shape[0])]
        if self.training and isinstance(mask_features, Tensor):
            for layer, out in enumerate(per_layer):
                out.update(mask_factors(embed[layer], mask_features))
        out = per_layer[-1]
        if self.deep_supervision and len(per_layer) > 1:
            out["aux_outputs"] = per_layer[:-1]
        return out

    @staticmethod
    def _layer_output(logits: Optional[Tensor], masks: Tensor, layer: int) -> Dict[str, Tensor]:
        out = {} if logits is None else {"pred_logits": logits[layer]}
        out["pred_masks"] = masks[layer]
        return out
