"""Mask2Former's pixel decoder: a deformable-attention encoder over several backbone levels,
then an FPN step down to stride 4.

The encoder (``transformer``) lets every position of res3-res5 (``DEFORMABLE_TRANSFORMER_
ENCODER_IN_FEATURES``) attend to a few sampled positions of all of them
(:class:`~.deformable_attention.MSDeformAttn`); the finer backbone levels (res2) are added FPN-style
(``adapter_i`` lateral 1x1 conv + bilinear upsampling + ``layer_i`` 3x3 conv). Outputs: the
per-pixel embeddings (``mask_features``, 1x1 conv, stride 4), the coarsest encoder level and the
multi-scale features the masked-attention decoder reads (the first three levels, coarsest first).

Parameter names are those of the official ``MSDeformAttnPixelDecoder``.
"""
import math
from typing import Dict, Iterable, List, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..losses import no_autocast
from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from ..transformer_decoder.transformer import _xavier_init
from .build import PIXEL_DECODER_REGISTRY
from .deformable_attention import MSDeformAttn
from .maskformer_pixel_decoder import BasePixelDecoder, Norm, _conv_norm

__all__ = ["MSDeformAttnEncoderLayer", "MSDeformAttnTransformerEncoderOnly", "MSDeformAttnPixelDecoder"]

# levels of the pixel decoder's output the transformer decoder reads (the official constant)
NUM_DECODER_LEVELS = 3


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block (post-norm)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: Sequence[Tuple[int, int]]) -> Tensor:
        """(B, S, C) tokens of all levels (+ their (B, S, C) positions) -> (B, S, C)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


def reference_points(spatial_shapes: Sequence[Tuple[int, int]], batch: int, device: torch.device
                     ) -> Tensor:
    """(B, S, L, 2): the centre (x, y in [0, 1]) of every position of every level, the same on
    each of the L levels (no padding mask: the whole padded image is valid, as officially)."""
    centres = []
    for h, w in spatial_shapes:
        y = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        x = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        centres.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), -1))
    points = torch.cat(centres)  # (S, 2)
    return points[None, :, None].expand(batch, -1, len(spatial_shapes), -1)


# the smallest (B, S, C) token tensor whose layers recompute_in_backward recomputes: below it the
# saved activations are small and recomputing costs more time than the memory is worth
# (Mask2Former R50 at 512x512, batch 2: 2.8M values; the shapes recipe: 0.7M)
_RECOMPUTE_FROM = 1 << 21


class MSDeformAttnEncoder(nn.Module):
    """A stack of :class:`MSDeformAttnEncoderLayer` (``layers.i``), every position of every level
    a query with its centre as reference point.

    With ``recompute_in_backward`` a training forward keeps only each layer's input and runs the
    layer again in backward (activation checkpointing: the same values and gradients, less peak
    memory for one more forward of the encoder; measured in docs/performance.md).
    """

    def __init__(self, layers: Iterable[MSDeformAttnEncoderLayer], recompute_in_backward: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.recompute_in_backward = recompute_in_backward

    def _recomputes(self, tokens: Tensor) -> bool:
        return (self.recompute_in_backward and self.training and torch.is_grad_enabled()
                and tokens.numel() >= _RECOMPUTE_FROM)

    def forward(self, tokens: Tensor, pos: Tensor, spatial_shapes: Sequence[Tuple[int, int]]
                ) -> Tensor:
        """(B, S, C) tokens of all levels and their positions -> (B, S, C)."""
        refs = reference_points(spatial_shapes, tokens.shape[0], tokens.device)
        recompute = self._recomputes(tokens)
        for layer in self.layers:
            if recompute:
                tokens = checkpoint(layer, tokens, pos, refs, spatial_shapes, use_reentrant=False)
            else:
                tokens = layer(tokens, pos, refs, spatial_shapes)
        return tokens


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """The encoder over L levels: level embeddings added to the sine positions, then
    ``num_encoder_layers`` :class:`MSDeformAttnEncoderLayer` (``encoder.layers.i``)."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.1, num_feature_levels: int = 4,
                 enc_n_points: int = 4, recompute_in_backward: bool = False):
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            (MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                      enc_n_points)
             for _ in range(num_encoder_layers)),
            recompute_in_backward,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        _xavier_init(self)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[Tensor], pos_embeds: Sequence[Tensor]) -> List[Tensor]:
        """
        Args:
            srcs: L maps (B, C, h_l, w_l).
            pos_embeds: their (B, C, h_l, w_l) position embeddings.

        Returns:
            the L encoded maps (B, C, h_l, w_l).
        """
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        tokens = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, C)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                         for i, p in enumerate(pos_embeds)], 1)
        tokens = self.encoder(tokens, pos, shapes)
        maps, start = [], 0
        for h, w in shapes:  # slicing (not split) keeps traced sizes symbolic in an export
            maps.append(tokens[:, start:start + h * w].transpose(1, 2).reshape(tokens.shape[0], -1, h, w))
            start = start + h * w
        return maps


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features -> (per-pixel embeddings, coarsest encoded level, multi-scale features)."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Norm = None,
        transformer_in_features: Sequence[str],
        common_stride: int,
        transformer_n_points: int = 4,
        recompute_encoder: bool = False,
    ):
        """
        Args:
            input_shape: channels and stride of the backbone features it reads.
            transformer_dropout, transformer_nheads, transformer_dim_feedforward,
                transformer_enc_layers: the deformable encoder's settings.
            conv_dim: channels of the encoder and of the FPN convs.
            mask_dim: channels of the per-pixel embeddings.
            norm: normalisation of the FPN convs (e.g. "GN").
            transformer_in_features: the features the encoder attends over (e.g. res3-res5).
            common_stride: stride of the per-pixel embeddings (4): the FPN adds the finer
                features down to it.
            transformer_n_points: sampling points per head and level.
            recompute_encoder: training recomputes the encoder layers in backward instead of
                keeping their activations (:class:`MSDeformAttnEncoder`).
        """
        super().__init__()
        levels = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in levels]  # finest (res2) to coarsest (res5)
        encoder_levels = [(k, v) for k, v in levels if k in transformer_in_features]
        if not encoder_levels:
            raise ValueError(f"MSDeformAttnPixelDecoder: DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES "
                             f"{list(transformer_in_features)} are not among {self.in_features}")
        self.transformer_in_features = [k for k, _ in encoder_levels]
        # input projections, coarsest level first (the official order of input_proj.i)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, v in encoder_levels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim, nhead=transformer_nheads, num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward, dropout=transformer_dropout,
            num_feature_levels=len(encoder_levels), enc_n_points=transformer_n_points,
            recompute_in_backward=recompute_encoder,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.common_stride = common_stride
        finest_encoded = encoder_levels[0][1].stride
        self.num_fpn_levels = max(0, round(math.log2(finest_encoded / common_stride)))
        for level, (_, shape) in enumerate(levels[: self.num_fpn_levels], start=1):
            self.add_module(f"adapter_{level}", _conv_norm(shape.channels, conv_dim, 1, norm))
            self.add_module(f"layer_{level}", _conv_norm(conv_dim, conv_dim, 3, norm, F.relu))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            **BasePixelDecoder.from_config(cfg, input_shape),  # the FPN's input_shape, conv_dim, mask_dim, norm
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": 1024,  # the official value (not a config key)
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "recompute_encoder": head.RECOMPUTE_ENCODER,
        }

    def forward_features(self, features: Dict[str, Tensor]
                         ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """
        Args:
            features: backbone features by name, e.g. "res2" (B, C2, H/4, W/4) ... "res5".

        Returns:
            mask_features: (B, mask_dim, H/4, W/4) per-pixel embeddings;
            the coarsest encoded level (B, conv_dim, H/32, W/32);
            multi_scale_features: the first ``NUM_DECODER_LEVELS`` levels of the output,
                coarsest first, e.g. strides 32, 16, 8, each (B, conv_dim, h_l, w_l).
        """
        with no_autocast(next(iter(features.values())).device):  # fp32, as officially
            coarse_first = self.transformer_in_features[::-1]
            srcs = [proj(features[f].float()) for proj, f in zip(self.input_proj, coarse_first)]
            pos = [self.pe_layer(features[f]) for f in coarse_first]
            out = self.transformer(srcs, pos)
            for level in range(self.num_fpn_levels, 0, -1):  # finer levels, coarse to fine
                lateral = getattr(self, f"adapter_{level}")(features[self.in_features[level - 1]].float())
                top_down = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear",
                                         align_corners=False)
                out.append(getattr(self, f"layer_{level}")(lateral + top_down))
            return self.mask_features(out[-1]), out[0], out[:NUM_DECODER_LEVELS]
