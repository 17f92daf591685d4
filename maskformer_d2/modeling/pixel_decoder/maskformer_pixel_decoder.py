"""FPN-style pixel decoders: backbone features -> per-pixel embeddings at stride 4.

Levels are numbered 1 (finest, e.g. res2) to N (coarsest, e.g. res5), as in the official
parameter names: ``adapter_i`` is the 1x1 lateral conv of level i (i < N), ``layer_i`` its 3x3
output conv, ``mask_features`` the final 3x3 conv to MASK_DIM channels.
"""
from typing import Callable, Dict, Optional, Tuple, Union

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import Tensor, nn
from torch.nn import functional as F

from ..mask_logits import DeferredProjection, is_linear_conv
from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from ..transformer_decoder.transformer import TransformerEncoderOnly
from .build import PIXEL_DECODER_REGISTRY, head_input_shape

__all__ = ["BasePixelDecoder", "TransformerEncoderPixelDecoder"]

Norm = Optional[Union[str, Callable[[int], nn.Module]]]


def _conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm: Norm,
    activation: Optional[Callable[[Tensor], Tensor]] = None,
) -> Conv2d:
    """A same-padding conv + norm (+ activation), c2-xavier initialised.

    The conv has a bias only when ``norm == ""`` (as in the official decoder: a norm layer makes
    the bias redundant, and ``norm=None`` also means no bias).
    """
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        bias=norm == "",
        norm=get_norm(norm, out_channels),
        activation=activation,
    )
    weight_init.c2_xavier_fill(conv)
    return conv


@PIXEL_DECODER_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """A top-down FPN over the backbone features, ending in a 3x3 conv to ``mask_dim`` channels.

    The coarsest level goes through ``layer_N`` (3x3 conv + norm + ReLU); every finer level i adds
    its lateral ``adapter_i(x_i)`` to the nearest-upsampled coarser result and applies
    ``layer_i``.
    """

    @property
    def supports_deferred_mask_features(self) -> bool:
        """Whether ``forward_features(features, deferred=True)`` may hand over the final conv
        uncomputed: true unless a subclass overrides ``forward_features`` (it can set this
        attribute itself when its override takes ``deferred``)."""
        return type(self).forward_features is BasePixelDecoder.forward_features

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: Norm = None,
    ):
        """
        Args:
            input_shape: channels and stride of each input feature (any number of levels).
            conv_dim: channels of the lateral and output convs.
            mask_dim: channels of the per-pixel embeddings (``mask_features``).
            norm: normalization of the lateral and output convs (a ``get_norm`` name or a
                callable of the channel count), e.g. "GN" (32 groups).
        """
        super().__init__()
        if not input_shape:
            raise ValueError(f"{type(self).__name__} needs at least one input feature")
        levels = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in levels]  # finest (res2) to coarsest (res5)
        self.in_channels = [shape.channels for _, shape in levels]
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim

        for level, channels in enumerate(self.in_channels[:-1], start=1):
            self.add_module(f"adapter_{level}", _conv_norm(channels, conv_dim, 1, norm))
            self.add_module(f"layer_{level}", _conv_norm(conv_dim, conv_dim, 3, norm, F.relu))
        self.add_module(
            self._coarsest_layer_name, _conv_norm(self.in_channels[-1], conv_dim, 3, norm, F.relu)
        )
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": head_input_shape(cfg, input_shape),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

    @property
    def _coarsest_layer_name(self) -> str:
        return f"layer_{len(self.in_features)}"

    def forward_coarsest(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            x: (B, C_N, h, w) the coarsest backbone feature.

        Returns:
            (B, conv_dim, h, w) the top of the top-down pathway, and the features for the
            transformer predictor (None here: this decoder has no transformer encoder).
        """
        return getattr(self, self._coarsest_layer_name)(x), None

    def forward_features(
        self, features: Dict[str, Tensor], deferred: bool = False
    ) -> Tuple[Union[Tensor, DeferredProjection], Optional[Tensor]]:
        """
        Args:
            features: backbone features by name, at least ``self.in_features``.
            deferred: return the final conv and its input instead of its output (when that conv
                is a plain one), for :func:`~maskformer_d2.modeling.mask_logits.mask_logits`.

        Returns:
            mask_features: (B, mask_dim, H/4, W/4) per-pixel embeddings (at the finest input
                stride), or their :class:`DeferredProjection`;
            transformer_encoder_features: (B, conv_dim, H/32, W/32) or None.
        """
        y, encoder_features = self.forward_coarsest(features[self.in_features[-1]])
        for level in range(len(self.in_features) - 1, 0, -1):
            lateral = getattr(self, f"adapter_{level}")(features[self.in_features[level - 1]])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{level}")(y)
        if deferred and is_linear_conv(self.mask_features):
            return DeferredProjection(y, self.mask_features), encoder_features
        return self.mask_features(y), encoder_features

    def forward(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)


@PIXEL_DECODER_REGISTRY.register()
class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """:class:`BasePixelDecoder` whose coarsest level first goes through a transformer encoder.

    Coarsest level: ``input_proj`` (1x1 conv to conv_dim) -> DETR encoder with sine position
    encoding -> ``layer_N`` (3x3 conv + norm + ReLU). The encoder output is also returned as the
    input of the transformer predictor (TRANSFORMER_IN_FEATURE "transformer_encoder").
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_pre_norm: bool,
        conv_dim: int,
        mask_dim: int,
        norm: Norm = None,
    ):
        """
        Args:
            input_shape, conv_dim, mask_dim, norm: as in :class:`BasePixelDecoder`.
            transformer_dropout: dropout in the encoder layers.
            transformer_nheads: attention heads.
            transformer_dim_feedforward: width of the feed-forward blocks.
            transformer_enc_layers: number of encoder layers.
            transformer_pre_norm: pre-LayerNorm layers (adds a final encoder norm).
        """
        super().__init__(input_shape, conv_dim=conv_dim, mask_dim=mask_dim, norm=norm)
        self.input_proj = Conv2d(self.in_channels[-1], conv_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.input_proj)
        self.transformer = TransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            normalize_before=transformer_pre_norm,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        # layer_N now reads the conv_dim-channel encoder output. It is registered anew (last) so
        # that the parameter order, hence optimizer-state order, is the official one.
        delattr(self, self._coarsest_layer_name)
        self.add_module(
            self._coarsest_layer_name, _conv_norm(conv_dim, conv_dim, 3, norm, F.relu)
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        mf = cfg.MODEL.MASK_FORMER
        ret.update(
            transformer_dropout=mf.DROPOUT,
            transformer_nheads=mf.NHEADS,
            transformer_dim_feedforward=mf.DIM_FEEDFORWARD,
            # the pixel decoder's encoder depth is a key of its own (MASK_FORMER.ENC_LAYERS is
            # the predictor's)
            transformer_enc_layers=cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS,
            transformer_pre_norm=mf.PRE_NORM,
        )
        return ret

    def forward_coarsest(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Returns:
            (B, conv_dim, h, w) output of ``layer_N``, and (B, conv_dim, h, w) encoder output.
        """
        # no padding mask, as in the official model
        encoded = self.transformer(self.input_proj(x), None, self.pe_layer(x))
        return getattr(self, self._coarsest_layer_name)(encoded), encoded
