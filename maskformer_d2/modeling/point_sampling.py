"""Where the point-sampled mask loss and matching look (Mask2Former's training recipe).

Instead of comparing whole masks, the matcher compares predictions and targets at
``num_points`` uniformly random points per image, and the loss at ``num_points`` points per
matched mask chosen by importance sampling: ``oversample_ratio * num_points`` random points,
of which the ``importance_sample_ratio`` share where the prediction is least certain
(logit closest to 0) is kept, topped up with fresh uniform points (detectron2's PointRend
sampler). Point coordinates are in [0, 1] x [0, 1] of the (padded) mask; values come from
bilinear sampling (``point_sample``, align_corners False).

Random draws come from torch's global generator in the official order, so a seeded run
reproduces the official losses: per decoder output, the matcher draws ``(1, P, 2)`` once per
image, then the loss draws ``(N, P * oversample_ratio, 2)`` and ``(N, P - int(P *
importance_sample_ratio), 2)`` (N = matched masks of the batch).
"""
from dataclasses import dataclass

import torch
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from torch import Tensor

__all__ = ["PointSampling", "matcher_points", "loss_points", "sample_masks"]


@dataclass(frozen=True)
class PointSampling:
    """``MODEL.MASK_FORMER.TRAIN_NUM_POINTS / OVERSAMPLE_RATIO / IMPORTANCE_SAMPLE_RATIO``;
    ``num_points == 0`` means the dense (whole-mask) loss and matching."""

    num_points: int = 0
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75

    @property
    def enabled(self) -> bool:
        return self.num_points > 0

    @classmethod
    def from_config(cls, cfg) -> "PointSampling":
        from .recipe import num_train_points

        mf = cfg.MODEL.MASK_FORMER
        return cls(num_train_points(cfg), mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO)


def matcher_points(num_images: int, num_points: int, device: torch.device) -> Tensor:
    """(B, P, 2) uniform points, one ``torch.rand(1, P, 2)`` draw per image in image order."""
    return torch.cat([torch.rand(1, num_points, 2, device=device) for _ in range(num_images)])


def _uncertainty(logits: Tensor) -> Tensor:
    """Higher where the (R, 1, ...) mask logits are closer to the decision boundary."""
    return -logits.abs()


def loss_points(mask_logits: Tensor, sampling: PointSampling) -> Tensor:
    """(N, P, 2) importance-sampled points of N (N, h, w) mask logits (no gradient)."""
    with torch.no_grad():
        return get_uncertain_point_coords_with_randomness(
            mask_logits[:, None], _uncertainty, sampling.num_points,
            sampling.oversample_ratio, sampling.importance_sample_ratio,
        )


def sample_masks(masks: Tensor, points: Tensor) -> Tensor:
    """Values of (B, C, h, w) masks at (B, P, 2) points, as (B, C, P) (bilinear)."""
    return point_sample(masks, points, align_corners=False)
