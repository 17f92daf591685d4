"""Folding a frozen BatchNorm into the convolution before it, for inference.

A ResNet's ``Conv2d -> BatchNorm`` pair computes ``(W * x + b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``, which is the convolution with weights ``W * s`` and bias
``(b - mean) * s + beta``: one pass over each activation instead of two. The folded weights
are computed once and reused until a weight or statistic changes (their version counters
tell) or the module is switched between training and evaluation (``train()`` / ``eval()``):
a BatchNorm updates its running statistics inside its kernel, and a fused optimiser its
weights, without bumping their version counters, so after training steps only the mode switch
says they moved. Training, or any call with autograd on, uses the unfolded path, so gradients
and the state dict (names, values) are exactly those of the unfolded model.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = ["BatchNormFoldingConv2d", "enable_batchnorm_folding", "fold_batchnorm"]


def fold_batchnorm(
    weight: Tensor, bias: Optional[Tensor], norm: nn.Module
) -> Tuple[Tensor, Tensor]:
    """The (weight, bias) of a convolution followed by ``norm`` in eval mode.

    Args:
        weight: (C_out, C_in/groups, kh, kw) convolution weight.
        bias: (C_out,) convolution bias or None.
        norm: a :class:`FrozenBatchNorm2d` or an ``nn.BatchNorm2d`` with running statistics.
    """
    gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = gamma / torch.sqrt(norm.running_var + norm.eps)
    shift = beta - norm.running_mean * scale
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.reshape(-1, 1, 1, 1), folded_bias


def _foldable(module: nn.Module) -> bool:
    norm = getattr(module, "norm", None)
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats \
        and norm.running_var is not None


class BatchNormFoldingConv2d(Conv2d):
    """detectron2's ``Conv2d`` whose BatchNorm is folded into it when no gradient is needed
    (same parameters, buffers and state dict; see the module docstring)."""

    def _state_key(self) -> tuple:
        tensors = [self.weight, self.bias, self.norm.weight, self.norm.bias,
                   self.norm.running_mean, self.norm.running_var]
        return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors if t is not None)

    def _folded(self) -> Tuple[Tensor, Tensor]:
        key = self._state_key()
        cached = self.__dict__.get("_folded_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, fold_batchnorm(self.weight, self.bias, self.norm))
            self.__dict__["_folded_cache"] = cached
        return cached[1]

    def train(self, mode: bool = True):
        # running statistics may have moved without a version bump (see the module docstring)
        self.__dict__.pop("_folded_cache", None)
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.norm.training or torch.is_grad_enabled():
            return super().forward(x)
        weight, bias = self._folded()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return self.activation(x) if self.activation is not None else x


def enable_batchnorm_folding(model: nn.Module) -> int:
    """Turn every detectron2 ``Conv2d`` of ``model`` followed by a foldable BatchNorm into a
    :class:`BatchNormFoldingConv2d` (in place; nothing else about the module changes).

    Returns:
        the number of convolutions that fold their norm.
    """
    count = 0
    for module in model.modules():
        if type(module) is Conv2d and _foldable(module):
            module.__class__ = BatchNormFoldingConv2d
            count += 1
    return count
