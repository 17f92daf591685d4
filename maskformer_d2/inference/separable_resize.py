"""Bilinear resizing of stacks of maps as two matrix products.

Bilinear interpolation (``align_corners=False``, no antialiasing: what the official post-processing
uses) is separable: each output row mixes two input rows and each output column two input
columns, with weights that depend only on the sizes. Written as products with the two 1-D
interpolation matrices it runs on the matrix units, several times faster than ``F.interpolate``
on a CPU (measured in docs/performance.md), with values equal to ``F.interpolate``'s within float
rounding (~1e-7 relative; the two taps are summed in another order). The matrices are
``F.interpolate`` of an identity, so edges and scales follow it exactly.

Used where the resized maps are summed right away (semantic scores); panoptic and instance
output keep ``F.interpolate`` so that their argmax ties break as in the official code.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_resize_matrix", "resize_width", "resize_rows"]


def linear_resize_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in) matrix of 1-D linear resizing (align_corners False), dtype/device of ``like``:
    row j holds the weights of the input samples that output sample j mixes."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)[None]  # n_in unit signals
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].t()


def resize_width(x: Tensor, width: int) -> Tensor:
    """(C, h, w) -> (C, h, width): every row resized."""
    c, h, w = x.shape
    matrix = linear_resize_matrix(w, width, x)
    return (x.reshape(c * h, w) @ matrix.t()).view(c, h, width)


def _input_rows(top: int, bottom: int, n_in: int, n_out: int) -> Tuple[int, int]:
    """A range of input rows holding every row that output rows [top, bottom) mix (with one row
    of margin each side against float rounding of the source coordinates)."""
    scale = n_in / n_out
    first = int((top + 0.5) * scale - 0.5)
    last = int((bottom - 0.5) * scale - 0.5) + 1
    return max(first - 1, 0), min(last + 2, n_in)


def resize_rows(x: Tensor, height_matrix: Tensor, top: int, bottom: int) -> Tensor:
    """Output rows [top, bottom) of ``x`` resized along its height.

    Args:
        x: (C, h, W) maps.
        height_matrix: ``linear_resize_matrix(h, H, x)``.
    Returns:
        (C, bottom - top, W).
    """
    lo, hi = _input_rows(top, bottom, x.shape[1], height_matrix.shape[0])
    return torch.matmul(height_matrix[top:bottom, lo:hi], x[:, lo:hi])
