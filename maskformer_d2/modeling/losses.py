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
from torch.autograd import Function

__all__ = [
    "no_autocast",
    "dice_loss",
    "sigmoid_focal_loss",
    "sigmoid_ce_loss",
    "batch_dice_cost",
    "batch_sigmoid_focal_cost",
    "pad_masks_to_common_size",
    "upsampled_mask_losses",
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

    The focal loss of a binary target ``t`` is ``pos * t + neg * (1 - t)``, with
    ``pos = alpha (1 - p)^gamma (-log p)`` and ``neg = (1 - alpha) p^gamma (-log(1 - p))``.

    Returns:
        (pos, neg), each with the shape of ``logits``.
    """
    prob = logits.sigmoid()
    minus_log_p = F.softplus(-logits)  # the binary cross-entropy with target 1
    minus_log_q = minus_log_p + logits  # ... and with target 0
    pos = _power(1 - prob, gamma) * minus_log_p
    neg = _power(prob, gamma) * minus_log_q
    if alpha >= 0:  # alpha < 0 means no class balancing, as in RetinaNet
        pos = alpha * pos
        neg = (1 - alpha) * neg
    return pos, neg


def _power(x: Tensor, gamma: float) -> Tensor:
    return x * x if gamma == 2 else x**gamma


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
        targets: (N, P) masks in [0, 1] (point-sampled targets are fractional at edges; the
            official formula, used here, is the binary one's natural extension).
        num_masks: the normaliser, as in :func:`dice_loss`.
        alpha: weight of the positive pixels (negative ones get ``1 - alpha``); < 0 disables it.
        gamma: exponent of the modulating factor ``(1 - p_t)``.

    Returns:
        scalar: the loss averaged over pixels, summed over masks, divided by ``num_masks``.
    """
    inputs, targets = inputs.float(), targets.float()
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * _power(1 - p_t, gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Binary cross-entropy of matched mask pairs (Mask2Former's mask loss).

    Args:
        inputs: (N, P) mask logits; targets: (N, P) values in [0, 1].

    Returns:
        scalar: averaged over points, summed over masks, divided by ``num_masks``.
    """
    loss = F.binary_cross_entropy_with_logits(inputs.float(), targets.float(), reduction="none")
    return loss.mean(1).sum() / num_masks


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss between every prediction and every target (of each batch element).

    Args:
        inputs: (..., N, P) mask logits.
        targets: (..., M, P) binary masks (the same leading dimensions).

    Returns:
        (..., N, M): entry (n, m) is the dice loss of ``inputs[n]`` against ``targets[m]``.
    """
    prob = inputs.float().sigmoid()
    targets = targets.float()
    return _dice_from_sums(
        prob @ targets.mT, prob.sum(-1).unsqueeze(-1), targets.sum(-1).unsqueeze(-2)
    )


def batch_sigmoid_focal_cost(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss (averaged over pixels) between every prediction and every target.

    With ``alpha=-1, gamma=0`` it is the sigmoid binary cross-entropy (Mask2Former's cost).

    Args:
        inputs: (..., N, P) mask logits.
        targets: (..., M, P) masks in [0, 1] (the loss is linear in the target).

    Returns:
        (..., N, M): entry (n, m) is ``sigmoid_focal_loss(inputs[n:n+1], targets[m:m+1], 1)``
        for binary targets.
    """
    targets = targets.float()
    pos, neg = _focal_terms(inputs.float(), alpha, gamma)
    return (pos @ targets.mT + neg @ (1 - targets).mT) / inputs.shape[-1]


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
    return [m if m.shape[-2:] == (height, width)
            else F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks]


# ----------------------------------------------------------------------------- fused dense loss
def _upsample(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """(N, h, w) -> (N, H, W), bilinear, align_corners False (how the official loss upsamples)."""
    return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _upsampling_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in) matrix of 1-d bilinear upsampling: ``_upsample`` of X is ``A_h X A_w^T``."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)
    return F.interpolate(eye[None, None], size=(n_out, n_in), mode="bilinear",
                         align_corners=False)[0, 0]


def _chunks(n: int, per_mask: int, elements: int = 1 << 20) -> List[slice]:
    step = max(1, elements // max(per_mask, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class _UpsampledMaskLosses(Function):
    """Focal and dice losses of mask logits upsampled to the targets' size, computed a few masks
    at a time; the backward pass recomputes the upsampling instead of keeping full-resolution
    intermediates, and uses the closed-form derivatives of both losses."""

    @staticmethod
    def forward(ctx, low_res: Tensor, targets: Tensor, num_masks: float, alpha: float,
                gamma: float) -> Tuple[Tensor, Tensor]:
        size, pixels = tuple(targets.shape[-2:]), targets.shape[-2] * targets.shape[-1]
        focal = low_res.new_zeros(low_res.shape[0])
        sums = low_res.new_zeros(low_res.shape[0], 3)  # per mask: sum p*t, sum p, sum t
        for part in _chunks(low_res.shape[0], pixels):
            x = _upsample(low_res[part], size).flatten(1)
            t = targets[part].flatten(1).to(x.dtype)
            pos, neg = _focal_terms(x, alpha, gamma)
            focal[part] = torch.where(t > 0.5, pos, neg).mean(1)
            p = x.sigmoid_()
            sums[part] = torch.stack([(p * t).sum(1), p.sum(1), t.sum(1)], 1)
        ctx.save_for_backward(low_res, targets, sums)
        ctx.num_masks, ctx.alpha, ctx.gamma = num_masks, alpha, gamma
        return focal.sum() / num_masks, _dice_from_sums(*sums.unbind(1)).sum() / num_masks

    @staticmethod
    def backward(ctx, grad_focal: Tensor, grad_dice: Tensor):
        low_res, targets, sums = ctx.saved_tensors
        alpha, gamma = ctx.alpha, ctx.gamma
        size, pixels = tuple(targets.shape[-2:]), targets.shape[-2] * targets.shape[-1]
        intersection, input_sum, target_sum = sums.unbind(1)
        denominator = input_sum + target_sum + 1
        # d dice / d p_i = (2I + 1) / D^2 - 2 t_i / D
        dice_a = grad_dice * (2 * intersection + 1) / denominator**2 / ctx.num_masks
        dice_b = grad_dice * 2 / denominator / ctx.num_masks
        pos_w = alpha if alpha >= 0 else 1.0
        neg_w = 1 - alpha if alpha >= 0 else 1.0
        grad = torch.empty_like(low_res)
        # the adjoint of the upsampling as two small matmuls (much faster than its backward op)
        rows_t = _upsampling_matrix(low_res.shape[-2], size[0], low_res).t().contiguous()
        cols = _upsampling_matrix(low_res.shape[-1], size[1], low_res)
        for part in _chunks(low_res.shape[0], pixels):
            x = _upsample(low_res[part], size).flatten(1)
            t = targets[part].flatten(1).to(x.dtype)
            p = x.sigmoid()
            sp_neg = F.softplus(-x)  # -log p
            sp_pos = sp_neg + x  # -log(1 - p)
            d_pos = -pos_w * _power(1 - p, gamma) * (gamma * p * sp_neg + (1 - p))
            d_neg = neg_w * _power(p, gamma) * (gamma * (1 - p) * sp_pos + p)
            g = torch.where(t > 0.5, d_pos, d_neg) * (grad_focal / (pixels * ctx.num_masks))
            g += (dice_a[part, None] - dice_b[part, None] * t) * p * (1 - p)
            grad[part] = rows_t @ g.view(-1, *size) @ cols
        return grad, None, None, None, None


def upsampled_mask_losses(low_res: Tensor, targets: Tensor, num_masks: float,
                          alpha: float = 0.25, gamma: float = 2.0) -> Tuple[Tensor, Tensor]:
    """``sigmoid_focal_loss`` and ``dice_loss`` of mask logits upsampled to the targets' size,
    without keeping (N, H, W) intermediates for the backward pass.

    Equal (to float rounding) to upsampling with ``F.interpolate`` (bilinear, align_corners
    False) and calling the two losses, in value and in gradient, in a fraction of the time
    and memory: the official MaskFormer loss, which upsamples every matched mask of every
    decoder layer to the padded image size.

    Args:
        low_res: (N, h, w) mask logits of the matched queries.
        targets: (N, H, W) binary target masks (bool or float).
        num_masks: the normaliser (number of target masks in the batch).

    Returns:
        (focal, dice): scalars.
    """
    return _UpsampledMaskLosses.apply(low_res.float(), targets, num_masks, alpha, gamma)
