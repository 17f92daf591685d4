"""Mask logits: every query's mask embedding dotted with every per-pixel embedding.

The per-pixel embeddings of the FPN pixel decoders are one linear convolution of a feature map
(the final ``mask_features`` conv: no norm, no activation), so

    masks[b, q] = sum_c E[b, q, c] * (W_c * y[b] + bias_c) = (sum_c E[b, q, c] W_c) * y[b] + E[b, q] . bias

is the same linear map with the conv and the embeddings composed first. At inference only the
final decoder layer's Q = 100 masks are needed while the conv has MASK_DIM = 256 output channels,
so the composed conv does Q / MASK_DIM of the multiplications and the (B, MASK_DIM, H/4, W/4)
embeddings are never materialised (for R50 at 512x512 it replaces a 3x3 conv at stride 4 plus
the product; docs/performance.md has the timing). The results equal the two-step ones up to float
rounding (summation order). Exported graphs keep the two steps (their batch size is dynamic, and
OpenVINO's CPU plugin refuses a convolution whose weight shape depends on it).

A pixel decoder hands over a :class:`DeferredProjection` instead of the embeddings only when asked
(:func:`~maskformer_d2.modeling.heads.predictor_input.decode_and_predict` asks in eval mode when
the predictor declares ``accepts_deferred_mask_features``); :func:`mask_logits` accepts both.

In training the losses read only the masks of the queries matched to a ground-truth segment (a
few tens of the B*Q). The predictors then also return the two factors (:func:`mask_factors`) and
the criterion multiplies them for the matched queries alone (``SetCriterion.loss_masks``): the
gradient flows through that small product and the (B, Q, H/4, W/4) one, read only without
gradient (matching, masked attention), gets no backward.
"""
from typing import Dict, NamedTuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .export_mode import is_exporting

__all__ = ["DeferredProjection", "mask_logits", "is_linear_conv", "mask_factors"]


def is_linear_conv(conv: nn.Module) -> bool:
    """True for a plain stride-1 ``nn.Conv2d`` (detectron2's Conv2d included) without norm or
    activation and with "same" output size: composable with the mask embeddings."""
    return (
        isinstance(conv, nn.Conv2d)
        and getattr(conv, "norm", None) is None
        and getattr(conv, "activation", None) is None
        and conv.groups == 1
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and all(2 * p == k - 1 for p, k in zip(conv.padding, conv.kernel_size))
    )


class DeferredProjection(NamedTuple):
    """Per-pixel embeddings ``conv(features)``, not computed yet.

    Attributes:
        features: (B, C_in, H, W) the conv's input.
        conv: a plain conv C_in -> mask_dim (see :func:`is_linear_conv`).
    """

    features: Tensor
    conv: nn.Conv2d

    def materialize(self) -> Tensor:
        """(B, mask_dim, H, W) the per-pixel embeddings."""
        return self.conv(self.features)

    def cheaper_composed(self, num_masks: int) -> bool:
        """Whether composing is cheaper than materialising for ``num_masks`` masks per image
        (multiply-adds per pixel: num_masks * C_in * k versus mask_dim * (C_in * k + num_masks))."""
        kernel = self.conv.in_channels * self.conv.kernel_size[0] * self.conv.kernel_size[1]
        return num_masks * kernel < self.conv.out_channels * (kernel + num_masks)

    def composed(self, mask_embed: Tensor) -> Tensor:
        """
        Args:
            mask_embed: (B, M, mask_dim) embeddings of the M masks wanted per image.
        Returns:
            (B, M, H, W) mask logits.
        """
        conv = self.conv
        masks = []
        for image, embed in zip(self.features.split(1), mask_embed):  # embed: (M, mask_dim)
            weight = (embed @ conv.weight.flatten(1)).view(-1, *conv.weight.shape[1:])
            bias = None if conv.bias is None else embed @ conv.bias
            masks.append(F.conv2d(image, weight, bias, padding=conv.padding))
        return torch.cat(masks)


def mask_logits(mask_embed: Tensor, mask_features: Union[Tensor, DeferredProjection]) -> Tensor:
    """
    Args:
        mask_embed: (L, B, Q, C) mask embeddings of L decoder layers.
        mask_features: (B, C, H, W) per-pixel embeddings, or a :class:`DeferredProjection` of them.
    Returns:
        (L, B, Q, H, W) mask logits.
    """
    if isinstance(mask_features, DeferredProjection):
        layers, b, q, c = mask_embed.shape
        # not in an exported graph: its batch is dynamic, and a convolution whose weights depend
        # on it is not supported by every runtime (OpenVINO's CPU plugin refuses it)
        if mask_features.cheaper_composed(layers * q) and not is_exporting():
            per_image = mask_embed.permute(1, 0, 2, 3).reshape(b, layers * q, c)
            masks = mask_features.composed(per_image)  # (B, L*Q, H, W)
            # contiguous like the einsum's result (a channels-last conv output would make the
            # later per-query upsampling slow)
            return masks.unflatten(1, (layers, q)).transpose(0, 1).contiguous()
        mask_features = mask_features.materialize()
    return torch.einsum("lbqc,bchw->lbqhw", mask_embed, mask_features)


def mask_factors(mask_embed: Tensor, mask_features: Tensor) -> Dict[str, Tensor]:
    """The factors of one layer's mask logits, as a predictor adds them to its training outputs.

    Args:
        mask_embed: (B, Q, C) mask embeddings.
        mask_features: (B, C, H, W) per-pixel embeddings.
    """
    return {"mask_embed": mask_embed, "mask_features": mask_features}
