"""The mask losses of MaskFormer and their pairwise siblings used as matching costs.

Each loss comes in two forms built from one formula (as in DETR):

* ``dice_loss`` / ``sigmoid_focal_loss``: the loss over *matched* pairs ``(inputs[i], targets[i])``,
  summed over masks and divided by ``num_masks`` (the criterion).
* ``batch_dice_cost`` / ``batch_sigmoid_focal_cost``: the same quantity for *every* pair
  ``(inputs[n], targets[m])`` as an ``(N, M)`` matrix (the Hungarian matcher).

Everything is computed in float32: inputs are cast here, and the two callers (the criterion's and
the matcher's ``cost_matrix``) run under :func:`no_autocast`, so mixed-precision training cannot change
a loss or a matching. Targets must be binary (0/1) masks.
"""
import contextlib
from typing import ContextManager, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "no_autocast",
    "dice_loss",
    "sigmoid_focal_loss",
    "batch_dice_cost",
    "batch_sigmoid_focal_cost",
    "pad_masks_to_common_size",
]


def no_autocast(device: torch.device) -> ContextManager:
    """A context in which autocast is off for ``device``'s type (so matmuls stay fp32)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _dice_from_sums(intersection: Tensor, input_sum: Tensor, target_sum: Tensor) -> Tensor:
    """``1 - (2 |X∩Y| + 1) / (|X| + |Y| + 1)``: the +1 smoothing makes two empty masks cost 0."""
    return 1 - (2 * intersection + 1) / (input_sum + target_sum + 1)


def _focal_terms(logits: Tensor, alpha: float, gamma: float) -> Tuple[Tensor, Tensor]:
    """Element-wise focal loss of ``logits`` if the target were 1 and if it were 0.

    The focal loss of a binary target ``t`` is ``pos * t + neg * (1 - t)``.

    Returns:
        (pos, neg), each with the shape of ``logits``.
    """
    prob = logits.sigmoid()
    pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.ones_like(logits), reduction="none"
    )
    neg = prob**gamma * F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none"
    )
    if alpha >= 0:  # alpha < 0 means no class balancing, as in RetinaNet
        pos = alpha * pos
        neg = (1 - alpha) * neg
    return pos, neg


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss of matched mask pairs.

    Args:
        inputs: (N, ...) mask logits.
        targets: (N, ...) binary masks, same number of elements per mask as ``inputs``.
        num_masks: the normaliser (number of target masks in the batch, averaged over processes).

    Returns:
        scalar: ``sum_i dice(sigmoid(inputs[i]), targets[i]) / num_masks``.
    """
    prob = inputs.float().sigmoid().flatten(1)
    targets = targets.float().flatten(1)
    loss = _dice_from_sums((prob * targets).sum(-1), prob.sum(-1), targets.sum(-1))
    return loss.sum() / num_masks


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss (RetinaNet) of matched mask pairs.

    Args:
        inputs: (N, P) mask logits, P pixels per mask.
        targets: (N, P) binary masks.
        num_masks: the normaliser, as in :func:`dice_loss`.
        alpha: weight of the positive pixels (negative ones get ``1 - alpha``); < 0 disables it.
        gamma: exponent of the modulating factor ``(1 - p_t)``.

    Returns:
        scalar: the loss averaged over pixels, summed over masks, divided by ``num_masks``.
    """
    targets = targets.float()
    pos, neg = _focal_terms(inputs.float(), alpha, gamma)
    loss = pos * targets + neg * (1 - targets)
    return loss.mean(1).sum() / num_masks


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss between every prediction and every target.

    Args:
        inputs: (N, P) mask logits.
        targets: (M, P) binary masks.

    Returns:
        (N, M): entry (n, m) is the dice loss of ``inputs[n]`` against ``targets[m]``.
    """
    prob = inputs.float().sigmoid()
    targets = targets.float()
    return _dice_from_sums(
        prob @ targets.T, prob.sum(-1)[:, None], targets.sum(-1)[None, :]
    )


def batch_sigmoid_focal_cost(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss (averaged over pixels) between every prediction and every target.

    Args:
        inputs: (N, P) mask logits.
        targets: (M, P) binary masks.

    Returns:
        (N, M): entry (n, m) is ``sigmoid_focal_loss(inputs[n:n+1], targets[m:m+1], 1)``.
    """
    targets = targets.float()
    pos, neg = _focal_terms(inputs.float(), alpha, gamma)
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


def pad_masks_to_common_size(masks: Sequence[Tensor]) -> List[Tensor]:
    """Zero-pad per-image target masks (bottom/right) to the largest height and width among them.

    This is how the official implementation brings the targets of a batch to one size before
    comparing them with predictions.

    Args:
        masks: per image, (n_i, H_i, W_i) masks (any dtype).

    Returns:
        per image, (n_i, max H, max W) masks of the same dtype.
    """
    if len(masks) == 0:
        return []
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    return [F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks]
