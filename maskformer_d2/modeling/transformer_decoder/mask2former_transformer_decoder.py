"""Mask2Former's transformer decoder: masked attention over multi-scale features.

Queries have learnable features (``query_feat``) and learnable positions (``query_embed``).
Each layer does masked cross-attention -> self-attention -> FFN, reading the pixel decoder's
levels round-robin (coarsest first). In cross-attention a query only sees the positions where
its previous mask prediction (resized to that level) has sigmoid >= 0.5; a query whose mask
would hide everything sees everything. A prediction (class logits + mask logits) is made from
the queries before the first layer and after every layer, so ``DEC_LAYERS`` predictions come
from ``DEC_LAYERS - 1`` layers (the last one is the output, the others are auxiliary).

Parameter names are those of the official ``MultiScaleMaskedTransformerDecoder``.
"""
from typing import Dict, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn
from torch.nn import functional as F

from ..mask_logits import mask_factors
from .build import TRANSFORMER_PREDICTOR_REGISTRY, query_predictor_args
from .maskformer_transformer_decoder import MLP
from .position_encoding import PositionEmbeddingSine
from .transformer import _image_to_sequence, _with_pos, _xavier_init

__all__ = ["SelfAttentionLayer", "CrossAttentionLayer", "FFNLayer", "MultiScaleMaskedTransformerDecoder"]


class _NormResidual(nn.Module):
    """``x + f(x)`` followed (post-norm) or preceded (pre-norm, on f's input) by LayerNorm."""

    def __init__(self, d_model: int, normalize_before: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before

    def residual(self, x: Tensor, f) -> Tensor:
        if self.normalize_before:
            return x + f(self.norm(x))
        return self.norm(x + f(x))


class SelfAttentionLayer(_NormResidual):
    """Self-attention among the queries (positions added to queries and keys)."""

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        super().__init__(d_model, normalize_before)
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        _xavier_init(self)

    def forward(self, tgt: Tensor, query_pos: Optional[Tensor] = None) -> Tensor:
        """(Q, B, C) -> (Q, B, C)"""
        def attend(x: Tensor) -> Tensor:
            q = k = _with_pos(x, query_pos)
            return self.self_attn(q, k, value=x, need_weights=False)[0]
        return self.residual(tgt, attend)


class CrossAttentionLayer(_NormResidual):
    """Queries attend to a feature map, optionally restricted by an attention mask."""

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        super().__init__(d_model, normalize_before)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        _xavier_init(self)

    def forward(self, tgt: Tensor, memory: Tensor, memory_mask: Optional[Tensor] = None,
                pos: Optional[Tensor] = None, query_pos: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            tgt: (Q, B, C) queries.
            memory: (HW, B, C) the flattened feature map; ``pos`` its (HW, B, C) positions.
            memory_mask: (B * heads, Q, HW) bool, True where a query may not look.
        """
        def attend(x: Tensor) -> Tensor:
            return self.multihead_attn(query=_with_pos(x, query_pos), key=_with_pos(memory, pos),
                                       value=memory, attn_mask=memory_mask, need_weights=False)[0]
        return self.residual(tgt, attend)


class FFNLayer(_NormResidual):
    """Two linear layers with a ReLU between them."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, normalize_before: bool = False):
        super().__init__(d_model, normalize_before)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        _xavier_init(self)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.residual(tgt, lambda x: self.linear2(F.relu(self.linear1(x))))


@TRANSFORMER_PREDICTOR_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder (see the module docstring); trained with the Mask2Former recipe
    (:mod:`maskformer_d2.modeling.recipe`)."""

    RECIPE = "mask2former"
    num_feature_levels = 3

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
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels: channels of each level of the multi-scale features.
            mask_classification: must be True (class logits per query).
            num_classes: K; the class head predicts K + 1 logits ("no object" last).
            hidden_dim: query width.
            num_queries: Q.
            nheads: attention heads.
            dim_feedforward: FFN width.
            dec_layers: number of layers (``MODEL.MASK_FORMER.DEC_LAYERS - 1``).
            pre_norm: pre-LayerNorm layers instead of post-LayerNorm.
            mask_dim: channels of the per-pixel embeddings.
            enforce_input_project: use a 1x1 conv input projection even when
                ``in_channels == hidden_dim``.
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder predicts classes; it cannot be "
                             "used without mask classification")
        self.mask_classification = True
        # eval mode: also return the earlier predictions (as the official decoder); a
        # meta-architecture that reads only the final one turns this off
        self.aux_outputs_in_eval = True
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_queries = num_queries
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                self.input_proj.append(Conv2d(in_channels, hidden_dim, kernel_size=1))
                weight_init.c2_xavier_fill(self.input_proj[-1])
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS={mf.DEC_LAYERS}: Mask2Former needs at "
                             "least 1 (the prediction from the learnable queries)")
        args = query_predictor_args(cfg, in_channels, mask_classification)
        args["dec_layers"] = mf.DEC_LAYERS - 1  # the first prediction needs no layer
        return args

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the official rename call the query features "static_query"
        for key in [k for k in state_dict if k.startswith(prefix + "static_query")]:
            state_dict[key.replace("static_query", "query_feat")] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Sequence[Tensor], mask_features: Tensor) -> Dict[str, object]:
        """
        Args:
            x: the pixel decoder's ``num_feature_levels`` maps (B, C, h_l, w_l), coarsest first.
            mask_features: (B, mask_dim, H/4, W/4) per-pixel embeddings.

        Returns:
            {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4) of the last prediction,
             in training also its factors "mask_embed" (B, Q, mask_dim) and "mask_features"
             (:func:`~maskformer_d2.modeling.mask_logits.mask_factors`),
             "aux_outputs": the earlier predictions in order (in eval mode only if
             ``aux_outputs_in_eval``)}
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"MultiScaleMaskedTransformerDecoder reads {self.num_feature_levels} "
                             f"feature levels, got {len(x)}")
        sizes = [tuple(level.shape[-2:]) for level in x]
        # (h*w, B, C) per level
        pos = [_image_to_sequence(self.pe_layer(level)) for level in x]
        src = [_image_to_sequence(proj(level)) + self.level_embed.weight[i]
               for i, (proj, level) in enumerate(zip(self.input_proj, x))]
        batch = src[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)  # (Q, B, C)

        keep_all = self.training or self.aux_outputs_in_eval
        prediction, attn_mask = self.predict(output, mask_features, sizes[0])
        predictions = [prediction]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            prediction, attn_mask = self.predict(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels])
            predictions.append(prediction)
        out = predictions[-1]
        if keep_all and len(predictions) > 1:
            out["aux_outputs"] = predictions[:-1]
        return out

    def predict(self, output: Tensor, mask_features: Tensor, attn_size: Tuple[int, int]
                ) -> Tuple[Dict[str, Tensor], Tensor]:
        """Class and mask logits of the (Q, B, C) queries (in training with their factors, see
        :func:`~maskformer_d2.modeling.mask_logits.mask_factors`), and the attention mask of
        the next layer: (B * heads, Q, h*w) bool, True where the mask resized to ``attn_size``
        has sigmoid < 0.5 (logit < 0), all False for a query that would see nothing."""
        decoded = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        embed = self.mask_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        resized = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False)
        hidden = (resized.sigmoid() < 0.5).flatten(2).detach()  # (B, Q, h*w)
        hidden = hidden & ~hidden.all(-1, keepdim=True)
        attn_mask = hidden.repeat_interleave(self.num_heads, dim=0)  # (B * heads, Q, h*w)
        prediction = {"pred_logits": self.class_embed(decoded), "pred_masks": masks}
        if self.training:
            prediction.update(mask_factors(embed, mask_features))
        return prediction, attn_mask
