"""Hungarian matching between MaskFormer's predictions and the ground-truth segments.

Each image's targets are assigned one-to-one to queries by minimising
``cost_class * (-p(target class)) + cost_mask * focal + cost_dice * dice`` (MaskFormer; Mask2Former
uses the sigmoid cross-entropy instead of the focal loss, on sampled points); unmatched queries
are trained as "no object" by the criterion.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

from .losses import batch_dice_cost, batch_sigmoid_focal_cost, no_autocast, pad_masks_to_common_size
from .point_sampling import matcher_points, sample_masks
from .recipe import num_train_points, recipe_of

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """Assign targets to queries one-to-one with minimal total cost (no gradient flows).

    The costs of a whole batch are built in one pass (targets padded to the largest count) and
    moved to the CPU as one array; each image is then solved on its own part of it.
    """

    @configurable
    def __init__(self, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0,
                 num_points: int = 0, mask_cost: str = "focal"):
        """
        Args:
            cost_class: weight of the classification cost (minus the target class probability).
            cost_mask: weight of the mask cost (``mask_cost``).
            cost_dice: weight of the dice loss between masks.
            num_points: 0: compare whole masks, targets downsampled (nearest) to the prediction
                size (MaskFormer); > 0: compare at that many uniform random points per image
                (Mask2Former; see :mod:`.point_sampling`).
            mask_cost: "focal" (sigmoid focal loss, MaskFormer) or "bce" (sigmoid
                cross-entropy, Mask2Former).
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice are all 0; "
                             "at least one must be non-zero for the matching to mean anything")
        if mask_cost not in _MASK_COSTS:
            raise ValueError(f"HungarianMatcher: mask_cost {mask_cost!r}; choose from {sorted(_MASK_COSTS)}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.mask_cost = mask_cost

    @classmethod
    def from_config(cls, cfg) -> Dict[str, float]:
        # the official models weight the matching costs like the losses
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": num_train_points(cfg),
            "mask_cost": recipe_of(cfg).mask_loss,
        }

    def cost_matrix(self, logits: Tensor, mask_logits: Tensor, labels: Tensor, masks: Tensor,
                    image_index: int = 0) -> Tensor:
        """The (Q, n) whole-mask matching cost of one image.

        Args:
            logits: (Q, K+1) class logits.
            mask_logits: (Q, h, w) mask logits.
            labels: (n,) int64 target classes in [0, K).
            masks: (n, H, W) binary target masks; downsampled (nearest) to (h, w) first.
            image_index: used in error messages only.
        """
        low = F.interpolate(masks[:, None].float(), size=mask_logits.shape[-2:], mode="nearest")
        return self.batch_cost_matrix(logits[None], mask_logits.flatten(1)[None], labels[None],
                                      low.flatten(1)[None], image_index)[0]

    def batch_cost_matrix(self, logits: Tensor, mask_logits: Tensor, labels: Tensor,
                          masks: Tensor, first_image: int = 0) -> Tensor:
        """The (B, Q, M) matching costs of a batch (entries for padded targets are meaningless).

        Args:
            logits: (B, Q, K+1) class logits.
            mask_logits: (B, Q, P) mask logits at P pixels or points.
            labels: (B, M) int64 target classes in [0, K), padded with any valid class.
            masks: (B, M, P) target masks at the same pixels or points, padded with zeros.
            first_image: index of ``logits[0]`` in the batch, for error messages.

        Returns:
            (B, Q, M) float32 cost (autocast is off inside); raises ValueError if any term is
            not finite.
        """
        with no_autocast(logits.device):
            prob = logits.float().softmax(-1)
            # "1 - p" approximated by "-p": the constant does not change the assignment
            cost_class = -torch.gather(prob, 2, labels[:, None, :].expand(-1, prob.shape[1], -1))
            pred, tgt = mask_logits.float(), masks.float()
            terms = {
                "class": self.cost_class * cost_class,
                f"mask ({self.mask_cost})": self.cost_mask * _MASK_COSTS[self.mask_cost](pred, tgt),
                "dice": self.cost_dice * batch_dice_cost(pred, tgt),
            }
        for name, term in terms.items():
            finite = torch.isfinite(term).flatten(1).all(1)
            if not finite.all():
                image = first_image + int((~finite).nonzero()[0, 0])
                raise ValueError(
                    f"HungarianMatcher: image {image} of the batch: the {name} cost has "
                    f"non-finite values (NaN/Inf); the predictions (pred_logits / pred_masks) are "
                    f"probably NaN/Inf because training diverged: lower SOLVER.BASE_LR or enable "
                    f"SOLVER.CLIP_GRADIENTS"
                )
        return sum(terms.values())

    def _compared_masks(self, pred_masks: Tensor, targets: Sequence[Dict[str, Tensor]]
                        ) -> Tuple[Tensor, List[Tensor]]:
        """Predictions (B, Q, P) and per-image targets (n_i, P) at the compared pixels/points."""
        target_masks = pad_masks_to_common_size([t["masks"] for t in targets])
        if self.num_points > 0:
            points = matcher_points(len(targets), self.num_points, pred_masks.device)
            pred = sample_masks(pred_masks, points)
            tgt = [sample_masks(m[None].to(pred.dtype), p[None])[0]
                   for m, p in zip(target_masks, points)]
            return pred, tgt
        size = tuple(pred_masks.shape[-2:])
        return pred_masks.flatten(2), [_downsampled(t, m, size).flatten(1)
                                       for t, m in zip(targets, target_masks)]

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]
                ) -> List[Tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: {"pred_logits": (B, Q, K+1) class logits,
                "pred_masks": (B, Q, h, w) mask logits}.
            targets: per image {"labels": (n,) int64, "masks": (n, H, W) bool/float}; masks are
                zero-padded to the largest size in the batch.

        Returns:
            per image (pred_idx, tgt_idx), int64 CPU tensors of length min(Q, n): query
            ``pred_idx[j]`` is matched to target ``tgt_idx[j]``; ``pred_idx`` is increasing.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of "
                             f"{pred_logits.shape[0]} predictions; pass one target dict per image")
        pred, target_masks = self._compared_masks(pred_masks, targets)
        counts = [len(t["labels"]) for t in targets]
        most = max(counts, default=0)
        empty = torch.empty(0, dtype=torch.int64)
        if most == 0:
            return [(empty, empty.clone()) for _ in targets]
        labels = pred_logits.new_zeros((len(targets), most), dtype=torch.int64)
        masks = pred.new_zeros((len(targets), most, pred.shape[-1]))
        for b, (t, m) in enumerate(zip(targets, target_masks)):
            labels[b, : counts[b]] = t["labels"]
            masks[b, : counts[b]] = m
        from scipy.optimize import linear_sum_assignment  # here: --eval-only never imports scipy

        cost = self.batch_cost_matrix(pred_logits, pred, labels, masks).cpu()  # one transfer per call
        indices = []
        for b, n in enumerate(counts):
            if n == 0:
                indices.append((empty, empty.clone()))
                continue
            pred_idx, tgt_idx = linear_sum_assignment(cost[b, :, :n].numpy())
            indices.append((torch.as_tensor(pred_idx, dtype=torch.int64),
                            torch.as_tensor(tgt_idx, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
                f"cost_dice={self.cost_dice}, num_points={self.num_points}, "
                f"mask_cost={self.mask_cost}")


def _sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    return batch_sigmoid_focal_cost(inputs, targets, alpha=-1, gamma=0)


_MASK_COSTS = {"focal": batch_sigmoid_focal_cost, "bce": _sigmoid_ce_cost}


def _downsampled(target: Dict[str, Tensor], masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """(n, h, w) float target masks downsampled (nearest) to the prediction size, as the
    official matcher compares them; computed once per target dict and size (every decoder
    layer of a batch is matched against the same targets)."""
    key = ("_matcher_masks_at", size)
    if key not in target or target[key][0] is not masks:
        low = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
        target[key] = (masks, low)
    return target[key][1]
