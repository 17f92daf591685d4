"""Turning labels into MaskFormer targets: one binary mask per segment.

All mappers share these functions; they differ only in where the segments come from:

* semantic: one mask per class present in the label map (the ignore label excluded);
* panoptic: one mask per non-crowd segment of the COCO-panoptic PNG;
* instance: one mask per non-crowd COCO annotation (polygons or RLE).
"""
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "check_labels",
    "semantic_masks",
    "panoptic_masks",
    "panoptic_to_semantic",
    "padded_size",
    "pad_to",
]

def check_labels(values: Iterable[int], num_classes: Optional[int], ignore_label: Optional[int],
                 source: str, what: str = "label") -> None:
    """Raise a one-line ValueError when a label is outside [0, num_classes) and not ignored.

    Args:
        values: the labels found (class ids or category ids).
        num_classes: K; None checks only for negative labels.
        ignore_label: the value allowed outside the range.
        source: the file the labels come from, named in the error.
    """
    for v in values:
        v = int(v)
        if v == ignore_label:
            continue
        if v < 0 or (num_classes is not None and v >= num_classes):
            raise ValueError(
                f"{source}: {what} {v} is outside [0, {num_classes}) and is not the ignore label "
                f"{ignore_label}; is MODEL.SEM_SEG_HEAD.NUM_CLASSES right for this dataset, and "
                f"was it prepared with the datasets/prepare_*.py script?")


def semantic_masks(sem_seg: np.ndarray, ignore_label: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One binary mask per class present in a semantic label map.

    Args:
        sem_seg: (H, W) class ids, ``ignore_label`` where unlabeled.
    Returns:
        classes: (n,) int64, sorted; masks: (n, H, W) bool.
    """
    classes = np.unique(sem_seg)
    classes = classes[classes != ignore_label].astype(np.int64)
    masks = sem_seg[None] == classes[:, None, None]
    return torch.from_numpy(classes), torch.from_numpy(np.ascontiguousarray(masks))


def panoptic_masks(pan_ids: np.ndarray, segments_info: Sequence[Dict[str, Any]]
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One binary mask per non-crowd segment of a panoptic id map.

    Args:
        pan_ids: (H, W) segment ids (``rgb2id`` of a COCO-panoptic PNG); 0 is void.
        segments_info: dicts with "id", "category_id" (contiguous) and "iscrowd".
    Returns:
        classes: (n,) int64; masks: (n, H, W) bool, in the order of ``segments_info``.
    """
    kept = [s for s in segments_info if not s.get("iscrowd", 0)]
    classes = np.array([s["category_id"] for s in kept], dtype=np.int64)
    ids = np.array([s["id"] for s in kept], dtype=pan_ids.dtype)
    masks = pan_ids[None] == ids[:, None, None]
    return torch.from_numpy(classes), torch.from_numpy(np.ascontiguousarray(masks))


def panoptic_to_semantic(pan_ids: np.ndarray, segments_info: Sequence[Dict[str, Any]],
                         ignore_label: int = 255, dtype: Any = np.uint8,
                         category_map: Optional[Dict[int, int]] = None) -> np.ndarray:
    """The semantic label map of a panoptic id map: every segment (crowd included) gets its class.

    Args:
        pan_ids: (H, W) segment ids; pixels of no segment (void) become ``ignore_label``.
        segments_info: dicts with "id" and "category_id".
        category_map: maps "category_id" to the written label (identity when None).
    Returns:
        (H, W) array of ``dtype``.
    """
    out = np.full(pan_ids.shape, ignore_label, dtype=dtype)
    for s in segments_info:
        cat = s["category_id"] if category_map is None else category_map[s["category_id"]]
        out[pan_ids == s["id"]] = cat
    return out


def padded_size(height: int, width: int, size_divisibility: int = -1,
                fixed_size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """The (H, W) a mapper pads to: ``fixed_size`` when given, else the next multiple of
    ``size_divisibility`` (no padding when it is <= 0).

    The official mappers padded to exactly SIZE_DIVISIBILITY (their crops were that size); the
    next multiple is the same there and stays correct for larger images.
    """
    if fixed_size is not None:
        return max(height, fixed_size[0]), max(width, fixed_size[1])
    if size_divisibility <= 0:
        return height, width
    d = size_divisibility
    return (height + d - 1) // d * d, (width + d - 1) // d * d


def pad_to(x: torch.Tensor, size: Tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims of ``x`` at the bottom and right to ``size`` with ``value``."""
    pad_h, pad_w = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    if x.dtype == torch.bool:  # F.pad has no bool kernel
        return F.pad(x.to(torch.uint8), [0, pad_w, 0, pad_h], value=int(value)).bool()
    return F.pad(x, [0, pad_w, 0, pad_h], value=value).contiguous()


def drop_empty(classes: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop segments that a crop removed entirely: (n,), (n, H, W) -> (m,), (m, H, W)."""
    if masks.shape[0] == 0:
        return classes, masks
    keep = masks.flatten(1).any(dim=1)
    return classes[keep], masks[keep]


def stack_masks(masks: List[np.ndarray], height: int, width: int) -> torch.Tensor:
    """(H, W) masks -> (n, H, W) bool, (0, H, W) when there are none."""
    if not masks:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks]))
