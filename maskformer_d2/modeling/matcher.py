"""Hungarian matching between MaskFormer's predictions and the ground-truth segments.

Each image's targets are assigned one-to-one to queries by minimising
``cost_class * (-p(target class)) + cost_mask * focal + cost_dice * dice``; unmatched queries are
trained as "no object" by the criterion.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from detectron2.config import configurable

from .losses import batch_dice_cost, batch_sigmoid_focal_cost, no_autocast, pad_masks_to_common_size

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """Assign targets to queries one-to-one with minimal total cost (no gradient flows)."""

    @configurable
    def __init__(self, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0):
        """
        Args:
            cost_class: weight of the classification cost (minus the target class probability).
            cost_mask: weight of the sigmoid focal loss between masks.
            cost_dice: weight of the dice loss between masks.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice are all 0; "
                             "at least one must be non-zero for the matching to mean anything")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice

    @classmethod
    def from_config(cls, cfg) -> Dict[str, float]:
        # the official model weights the matching costs like the losses
        return {
            "cost_class": 1.0,
            "cost_mask": cfg.MODEL.MASK_FORMER.MASK_WEIGHT,
            "cost_dice": cfg.MODEL.MASK_FORMER.DICE_WEIGHT,
        }

    def cost_matrix(self, logits: Tensor, mask_logits: Tensor, labels: Tensor, masks: Tensor,
                    image_index: int = 0) -> Tensor:
        """The (Q, n) matching cost of one image.

        Args:
            logits: (Q, K+1) class logits.
            mask_logits: (Q, h, w) mask logits.
            labels: (n,) int64 target classes in [0, K).
            masks: (n, H, W) binary target masks; downsampled (nearest) to (h, w) first.
            image_index: used in error messages only.

        Returns:
            (Q, n) float32 cost (autocast is off inside); raises ValueError if any term is not
            finite.
        """
        with no_autocast(logits.device):
            prob = logits.float().softmax(-1)
            # "1 - p" approximated by "-p": the constant does not change the assignment
            cost_class = -prob[:, labels]
            # the official matcher compares at the prediction resolution to save memory
            masks = F.interpolate(masks[:, None].float(), size=mask_logits.shape[-2:],
                                  mode="nearest")
            pred = mask_logits.float().flatten(1)
            tgt = masks[:, 0].flatten(1)
            terms = {
                "class": self.cost_class * cost_class,
                "mask (focal)": self.cost_mask * batch_sigmoid_focal_cost(pred, tgt),
                "dice": self.cost_dice * batch_dice_cost(pred, tgt),
            }
        for name, term in terms.items():
            if not torch.isfinite(term).all():
                raise ValueError(
                    f"HungarianMatcher: image {image_index} of the batch: the {name} cost has "
                    f"non-finite values (NaN/Inf); the predictions (pred_logits / pred_masks) are "
                    f"probably NaN/Inf because training diverged: lower SOLVER.BASE_LR or enable "
                    f"SOLVER.CLIP_GRADIENTS"
                )
        return terms["class"] + terms["mask (focal)"] + terms["dice"]

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
        target_masks = pad_masks_to_common_size([t["masks"] for t in targets])
        indices = []
        for b, (target, masks) in enumerate(zip(targets, target_masks)):
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], target["labels"], masks, b)
            pred_idx, tgt_idx = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(pred_idx, dtype=torch.int64),
                            torch.as_tensor(tgt_idx, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
                f"cost_dice={self.cost_dice}")
