"""MaskFormer's set-prediction loss: Hungarian matching, then class and mask losses on the pairs.

For each decoder layer (the final one and, with deep supervision, every earlier one with its own
matching) the criterion returns

* ``loss_ce``: cross-entropy over the K+1 classes of every query (unmatched queries -> "no object",
  whose weight is ``eos_coef``),
* ``loss_mask``: sigmoid focal loss and ``loss_dice``: dice loss of the matched masks, both divided
  by the number of target masks in the batch, at every pixel of the padded image or, with
  ``TRAIN_NUM_POINTS > 0``, at importance-sampled points (Mask2Former's recipe),

with suffix ``_i`` for earlier layer ``i``. The losses are returned unweighted; ``weight_dict``
holds the weights (see :meth:`SetCriterion.weighted`).
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.comm import get_world_size
from torch import Tensor, nn

from .losses import (
    dice_loss,
    no_autocast,
    pad_masks_to_common_size,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    upsampled_mask_losses,
)
from .matcher import HungarianMatcher
from .point_sampling import PointSampling, loss_points, sample_masks
from .recipe import recipe_of

_POINT_MASK_LOSSES = {"focal": sigmoid_focal_loss, "bce": sigmoid_ce_loss}

__all__ = ["SetCriterion", "build_weight_dict"]

Indices = List[Tuple[Tensor, Tensor]]


def build_weight_dict(
    ce_weight: float, mask_weight: float, dice_weight: float, num_aux_layers: int
) -> Dict[str, float]:
    """Loss weights of the final layer and of ``num_aux_layers`` earlier ones (suffix ``_i``)."""
    base = {"loss_ce": ce_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    for i in range(num_aux_layers):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def _num_masks_per_process(targets: Sequence[Dict[str, Tensor]], device: torch.device) -> float:
    """Number of target masks in the batch, averaged over processes, at least 1."""
    num_masks = torch.as_tensor(
        [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_masks)
    return torch.clamp(num_masks / get_world_size(), min=1).item()


def _query_index(indices: Indices) -> Tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched pair, image by image."""
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


# Masks of at least this many pixels are multiplied from their factors for the loss: at 128x128
# (512-px crops) that saves the full product's backward, 0.43 s of a Mask2Former R50 step; at
# 32x32 (the shapes recipe) the per-image products cost more than they save (about 2% of a step).
_FACTORS_FROM_PIXELS = 64 * 64


def _matched_mask_logits(outputs: Mapping[str, Tensor], indices: Indices) -> Tensor:
    """(N, h, w) mask logits of the N matched queries, image by image in the order of
    ``indices``. With the predictor's float32 :func:`~maskformer_d2.modeling.mask_logits.mask_factors`
    in ``outputs``, their product for those queries only (the gradient then skips the full
    (B, Q, h, w) product; values equal up to float rounding); otherwise (no factors, autocast,
    where the predictor's product runs in lower precision, or masks smaller than
    ``_FACTORS_FROM_PIXELS``) rows of "pred_masks"."""
    embed, features = outputs.get("mask_embed"), outputs.get("mask_features")
    if (embed is None or not isinstance(features, Tensor) or embed.dtype != torch.float32
            or outputs["pred_masks"].dtype != torch.float32
            or features.shape[-2] * features.shape[-1] < _FACTORS_FROM_PIXELS):
        return outputs["pred_masks"][_query_index(indices)]
    masks = [embed[b, q] @ features[b].flatten(1) for b, (q, _) in enumerate(indices)]
    return torch.cat(masks).view(-1, *features.shape[-2:])


def _sample_matched_targets(target_masks: Sequence[Tensor], indices: Indices, points: Tensor) -> Tensor:
    """Each matched target mask's values at its prediction's points, sampled where the targets
    lie: no copy of the matched (H, W) masks (the same values as sampling those copies).

    Args:
        target_masks: per image (n_b, H, W) target masks (padded to one size).
        indices: per image the (prediction, target) index pairs of the matching.
        points: (N, P, 2) points of the N matched pairs, image by image.
    Returns:
        (N, P) target values.
    """
    values, start = [], 0
    for masks, (_, tgt) in zip(target_masks, indices):
        grid = points.new_zeros((masks.shape[0],) + points.shape[1:])  # unmatched targets: unused
        grid[tgt] = points[start:start + len(tgt)]
        start += len(tgt)
        values.append(sample_masks(masks[:, None].to(points), grid)[tgt, 0])
    return torch.cat(values)


class SetCriterion(nn.Module):
    """Loss of MaskFormer's set prediction (see the module docstring)."""

    @configurable
    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "masks"),
        point_sampling: PointSampling = PointSampling(),
        mask_loss: str = "focal",
    ):
        """
        Args:
            num_classes: K, the number of categories (without "no object").
            matcher: maps (outputs, targets) to per-image (pred_idx, tgt_idx), e.g.
                :class:`HungarianMatcher`.
            weight_dict: loss name -> weight; kept here for the meta-architecture
                (the losses returned by ``forward`` are unweighted).
            eos_coef: cross-entropy weight of the "no object" class.
            losses: which of "labels" (loss_ce) and "masks" (loss_mask, loss_dice) to compute.
            point_sampling: with ``num_points > 0`` the mask losses are computed at that many
                importance-sampled points per matched mask (Mask2Former) instead of at every
                pixel of the padded image (MaskFormer, the default).
            mask_loss: "focal" (sigmoid focal loss, MaskFormer) or "bce" (sigmoid
                cross-entropy, Mask2Former); dice is always added.
        """
        super().__init__()
        unknown = set(losses) - set(self._LOSSES)
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}; "
                             f"choose from {sorted(self._LOSSES)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        if mask_loss not in _POINT_MASK_LOSSES:
            raise ValueError(f"SetCriterion: mask_loss {mask_loss!r}; choose from "
                             f"{sorted(_POINT_MASK_LOSSES)}")
        if mask_loss != "focal" and not point_sampling.enabled:
            raise ValueError("SetCriterion: the dense (whole-mask) loss is the focal loss; "
                             f"mask_loss {mask_loss!r} needs TRAIN_NUM_POINTS > 0")
        self.point_sampling = point_sampling
        self.mask_loss = mask_loss
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    _LOSSES = {"labels": "loss_labels", "masks": "loss_masks"}

    @classmethod
    def from_config(cls, cfg) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        num_aux = mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "weight_dict": build_weight_dict(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, num_aux),
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "losses": ("labels", "masks"),
            "point_sampling": PointSampling.from_config(cfg),
            "mask_loss": recipe_of(cfg).mask_loss,
        }

    def loss_labels(self, outputs: Mapping[str, Tensor], targets: Sequence[Dict[str, Tensor]],
                    indices: Indices, num_masks: float) -> Dict[str, Tensor]:
        """Cross-entropy over K+1 classes of all B*Q queries; unmatched ones target class K."""
        logits = outputs["pred_logits"].float()  # (B, Q, K+1)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=logits.device)
        target_classes[_query_index(indices)] = torch.cat(
            [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        ).to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.float())
        return {"loss_ce": loss}

    def loss_masks(self, outputs: Mapping[str, Tensor], targets: Sequence[Dict[str, Tensor]],
                   indices: Indices, num_masks: float) -> Dict[str, Tensor]:
        """Mask (focal or BCE) and dice losses of the matched masks: at every pixel of the padded
        image (predictions upsampled, targets exact) or at sampled points."""
        pred_masks = outputs["pred_masks"]  # (B, Q, h, w)
        src = _matched_mask_logits(outputs, indices).float()  # (N, h, w)
        if src.shape[0] == 0:  # no target in the batch: zero losses still attached to the graph
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        padded = pad_masks_to_common_size([t["masks"] for t in targets])
        if not self.point_sampling.enabled:
            tgt = torch.cat([m[j] for m, (_, j) in zip(padded, indices)])  # (N, H, W)
            focal, dice = upsampled_mask_losses(src, tgt.to(src.device), num_masks)
            return {"loss_mask": focal, "loss_dice": dice}
        points = loss_points(src, self.point_sampling)  # (N, P, 2)
        with torch.no_grad():
            point_labels = _sample_matched_targets(padded, indices, points.to(src))
        point_logits = sample_masks(src[:, None], points)[:, 0]
        return {
            "loss_mask": _POINT_MASK_LOSSES[self.mask_loss](point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def _layer_losses(self, outputs: Mapping[str, Tensor], targets: Sequence[Dict[str, Tensor]],
                      num_masks: float) -> Dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        losses = {}
        for name in self.losses:
            losses.update(getattr(self, self._LOSSES[name])(outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: Mapping, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """
        Args:
            outputs: the head output: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w) mask
                logits and optionally "aux_outputs", a list of such dicts for earlier layers.
            targets: per image {"labels": (n,) int64 in [0, K), "masks": (n, H, W) bool/float}.

        Returns:
            unweighted float32 scalar losses: loss_ce, loss_mask, loss_dice and, for each
            auxiliary layer i, loss_ce_i, loss_mask_i, loss_dice_i.
        """
        if targets is None:
            raise ValueError("SetCriterion: no targets; training needs per-image 'instances' "
                             "(gt_classes, gt_masks) from the dataset mapper")
        device = outputs["pred_logits"].device
        num_masks = _num_masks_per_process(targets, device)
        # padded once for all decoder layers (copies of the dicts: the matcher caches in them)
        padded = pad_masks_to_common_size([t["masks"] for t in targets])
        if self.point_sampling.enabled:  # sampled bilinearly: float once, not once per layer
            padded = [m.float() for m in padded]
        targets = [dict(t, masks=m) for t, m in zip(targets, padded)]
        with no_autocast(device):
            final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
            losses = self._layer_losses(final, targets, num_masks)
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._layer_losses(aux, targets, num_masks)
                losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def weighted(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Multiply each loss by its weight; losses without a weight are dropped (as officially)."""
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
                f"weight_dict={self.weight_dict}")
