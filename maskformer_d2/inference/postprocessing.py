"""Turn one image's mask-classification prediction into semantic, panoptic or instance output.

All tasks start from the same prediction of the final decoder layer, held by
:class:`ImagePrediction`:

* ``mask_cls``: (Q, K+1) class logits per query, the last class being "no object";
* ``mask_pred``: (Q, H, W) mask logits per query, at the resolution the output should have
  (upsampled from the stride-4 prediction at most once, and only for the queries a task keeps:
  see :class:`QueryMasks`).

and share :func:`class_probabilities`; they differ only in how queries are combined. The table
of tasks that calls these functions is :mod:`maskformer_d2.inference.tasks`.
"""
import functools
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor

from .separable_resize import linear_resize_matrix, resize_rows, resize_width

__all__ = [
    "InferenceOptions",
    "ImagePrediction",
    "QueryMasks",
    "class_probabilities",
    "argmax_over_first_dim",
    "mask_boxes",
    "semantic_inference",
    "upsampled_semantic_inference",
    "panoptic_inference",
    "instance_inference",
    "semantic_output",
    "panoptic_output",
    "instance_output",
]


@dataclass(frozen=True)
class InferenceOptions:
    """The settings of post-processing (``MODEL.MASK_FORMER.TEST.*`` and dataset metadata).

    Attributes:
        thing_ids: contiguous ids of the thing classes (panoptic and instance output need them).
        object_mask_threshold, overlap_threshold: the panoptic thresholds.
        detections_per_image: top-k of instance inference (``TEST.DETECTIONS_PER_IMAGE``).
        sem_seg_postprocess_before_inference: resize mask logits to the output size before
            semantic inference (the official option; panoptic and instance always are).
        panoptic_segment_within_own_mask: a panoptic segment is the pixels its query wins AND
            where its own mask is >= 0.5 (Mask2Former) instead of all pixels it wins (MaskFormer).
        instance_things_only: instance output keeps only thing classes (else all classes).
    """

    thing_ids: Optional[FrozenSet[int]] = None
    object_mask_threshold: float = 0.0
    overlap_threshold: float = 0.0
    detections_per_image: int = 100
    sem_seg_postprocess_before_inference: bool = False
    panoptic_segment_within_own_mask: bool = False
    instance_things_only: bool = True


class ImagePrediction:
    """The final-layer prediction of one image; full-size mask logits are computed on demand, at
    most once, and only for the queries a task asks for.

    Upsampling is independent per query, so the masks of a few queries computed alone equal the
    same rows of all queries' masks: panoptic and instance output upsample only the queries they
    keep, and a resize to the size the prediction already has is skipped (it is the identity).

    Args:
        mask_cls: (Q, K+1) class logits.
        low_res_mask_pred: (Q, h, w) mask logits at the prediction's resolution (stride 4).
        padded_size: the (Hpad, Wpad) of the padded input the prediction covers.
        image_size: the (h, w) of the image inside the padding.
        height, width: the output size (the original image's).
    """

    def __init__(self, mask_cls: Tensor, low_res_mask_pred: Tensor, padded_size: Tuple[int, int],
                 image_size: Tuple[int, int], height: int, width: int):
        self.mask_cls = mask_cls
        self.low_res_mask_pred = low_res_mask_pred
        self.padded_size = tuple(padded_size)
        self.image_size = tuple(image_size)
        self.height = height
        self.width = width

    @property
    def num_classes(self) -> int:
        """K, the number of classes without "no object"."""
        return self.mask_cls.shape[-1] - 1

    def upsample(self, x: Tensor) -> Tensor:
        """(C, h, w) -> (C, Hpad, Wpad), bilinear (align_corners False), as the official code."""
        return F.interpolate(x[None], size=self.padded_size, mode="bilinear", align_corners=False)[0]

    @functools.cached_property
    def padded_mask_pred(self) -> Tensor:
        """(Q, Hpad, Wpad) mask logits of every query at the padded input size."""
        return self.upsample(self.low_res_mask_pred)

    @functools.cached_property
    def mask_pred(self) -> Tensor:
        """(Q, height, width) mask logits of every query: the padding cropped, then resized."""
        return self.resize(self.padded_mask_pred)

    def masks_of(self, queries: Tensor) -> Tensor:
        """(N, height, width) mask logits of the queries ``queries`` (N indices, repeats allowed),
        equal to ``mask_pred[queries]`` without computing the other queries' masks."""
        if "mask_pred" in self.__dict__:
            return self.mask_pred[queries]
        unique, inverse = torch.unique(queries, return_inverse=True)
        if unique.numel() == 0:
            return self.low_res_mask_pred.new_zeros((0, self.height, self.width))
        if "padded_mask_pred" in self.__dict__:
            masks = self.resize(self.padded_mask_pred[unique])
        else:
            masks = self.resize(self.upsample(self.low_res_mask_pred[unique]))
        if unique.numel() == queries.numel() and torch.equal(unique, queries):
            return masks  # distinct and sorted already: no gather copy
        return masks[inverse]

    @property
    def lazy_mask_pred(self) -> "QueryMasks":
        """``mask_pred`` as an indexable stand-in that computes only the indexed queries."""
        return QueryMasks(self)

    def resize(self, x: Tensor) -> Tensor:
        """(C, Hpad, Wpad) -> (C, height, width), like detectron2's ``sem_seg_postprocess`` (crop
        the padding, resize bilinearly); when the crop already has the output size the resize
        is skipped, since it would return its input unchanged."""
        if self.image_size == (self.height, self.width):
            return x[:, : self.height, : self.width]
        return sem_seg_postprocess(x, self.image_size, self.height, self.width)


class QueryMasks:
    """Indexing ``QueryMasks(p)[index]`` gives ``p.mask_pred[index]`` (index: bool mask or int64
    indices over the Q queries) computing only those queries' full-size masks; ``shape`` and
    ``device`` are those of ``p.mask_pred``. Panoptic and instance inference take it in place of
    the (Q, H, W) tensor."""

    def __init__(self, prediction: ImagePrediction):
        self.prediction = prediction

    @property
    def shape(self) -> torch.Size:
        p = self.prediction
        return torch.Size((p.low_res_mask_pred.shape[0], p.height, p.width))

    @property
    def device(self) -> torch.device:
        return self.prediction.low_res_mask_pred.device

    def __getitem__(self, index: Tensor) -> Tensor:
        if index.dtype == torch.bool:
            index = index.nonzero()[:, 0]
        return self.prediction.masks_of(index)


def class_probabilities(mask_cls: Tensor, num_classes: Optional[int] = None) -> Tensor:
    """Softmax over the K+1 classes, then the "no object" column dropped.

    Args:
        mask_cls: (Q, K+1) class logits.
        num_classes: K, checked against ``mask_cls`` when given.

    Returns:
        (Q, K) probabilities (rows sum to 1 - p(no object)).
    """
    if num_classes is not None and mask_cls.shape[-1] != num_classes + 1:
        raise ValueError(
            f"mask_cls has {mask_cls.shape[-1]} class logits per query but "
            f"num_classes={num_classes} needs {num_classes + 1} (K classes + 'no object'); "
            f"is MODEL.SEM_SEG_HEAD.NUM_CLASSES the one the model was trained with?"
        )
    return F.softmax(mask_cls, dim=-1)[..., :-1]


def argmax_over_first_dim(x: Tensor) -> Tensor:
    """``x.argmax(0)`` for a (N, H, W) tensor by the indices of ``max`` (documented to be the
    first maximum's: the same result, ties included), which on the CPU is several times as fast
    as ``argmax`` where the reduced dimension is not the innermost. Without a copy for tensors
    contiguous (N, H, W) or laid out (H, W, N) in memory (the semantic scores of
    :func:`semantic_inference`), one copy to the latter otherwise.

    Returns:
        (H, W) int64 indices into the first dimension.
    """
    if x.shape[0] <= 1 or x.device.type != "cpu":
        return x.argmax(0)
    x = x.detach()
    if x.is_contiguous():
        return x.max(0).indices
    return x.permute(1, 2, 0).contiguous().max(-1).indices


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """Per-pixel class scores: ``sum_q p_q(c) * sigmoid(mask_q)``.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.

    Returns:
        (K, H, W) scores (not normalised over classes), laid out (H, W, K) in memory: the
        class scores of a pixel are adjacent, so a per-pixel argmax reads memory in order.
    """
    return torch.einsum("qc,qhw->hwc", class_probabilities(mask_cls), mask_pred.sigmoid()).permute(2, 0, 1)


def upsampled_semantic_inference(mask_cls: Tensor, low_res_mask_pred: Tensor,
                                 size: Tuple[int, int], rows_per_chunk: int = 32) -> Tensor:
    """``semantic_inference(mask_cls, upsample(low_res_mask_pred, size))`` without holding the
    (Q, H, W) upsampled masks.

    The bilinear upsampling is separable (:mod:`maskformer_d2.inference.separable_resize`): the masks are
    resized along the width once, (Q, h, W), then along the height a band of output rows at a
    time; each band goes through the sigmoid and is summed over queries while it is still in
    the cache. Equal to the whole-image computation within float rounding.

    Args:
        mask_cls: (Q, K+1) class logits.
        low_res_mask_pred: (Q, h, w) mask logits.
        size: (H, W) output size (bilinear, align_corners False).
        rows_per_chunk: output rows per band.

    Returns:
        (K, H, W) scores, laid out (H, W, K) in memory as :func:`semantic_inference`'s.
    """
    (q, h, _), (height, width) = low_res_mask_pred.shape, size
    probs = class_probabilities(mask_cls).contiguous()  # (Q, K)
    along_width = resize_width(low_res_mask_pred, width)  # (Q, h, W)
    height_matrix = linear_resize_matrix(h, height, low_res_mask_pred)
    scores = low_res_mask_pred.new_empty((height, width, probs.shape[1]))
    for top in range(0, height, rows_per_chunk):
        bottom = min(top + rows_per_chunk, height)
        band = resize_rows(along_width, height_matrix, top, bottom).sigmoid_()  # (Q, rows, W)
        rows = scores[top:bottom].view(-1, probs.shape[1])  # a view, (rows * W, K)
        torch.mm(band.view(q, -1).t(), probs, out=rows)
    return scores.permute(2, 0, 1)


def panoptic_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    num_classes: int,
    thing_ids: Set[int],
    object_mask_threshold: float,
    overlap_threshold: float,
    within_own_mask: bool = False,
) -> Tuple[Tensor, List[Dict]]:
    """Non-overlapping segments from the confident queries (official MaskFormer / Mask2Former rule).

    A query is kept if its most likely class is not "no object" and that class's probability
    exceeds ``object_mask_threshold``. Each pixel goes to the kept query with the largest
    ``score * sigmoid(mask)``. A query's segment is the pixels it wins (MaskFormer: even where
    its own mask is < 0.5) or, with ``within_own_mask`` (Mask2Former), the pixels it wins where
    its own mask is >= 0.5. It is dropped when it wins no pixel, when its mask has no pixel >=
    0.5, when its segment is empty, or when the pixels it wins are fewer than
    ``overlap_threshold`` times its pixels >= 0.5. Segments of one stuff class merge into the
    first one; things stay separate.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits, or a :class:`QueryMasks` that computes only the
            kept queries' masks.
        num_classes: K.
        thing_ids: contiguous ids (in [0, K)) of the thing classes.
        object_mask_threshold: minimum class probability of a kept query.
        overlap_threshold: minimum (pixels won) / (pixels of its mask) of a kept segment.
        within_own_mask: Mask2Former's segment rule (see above).

    Returns:
        panoptic_seg: (H, W) int32 segment ids, 0 = void, segments numbered from 1;
        segments_info: per segment {"id": int, "isthing": bool, "category_id": int}.
    """
    class_probabilities(mask_cls, num_classes)  # validates the shape
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes = scores[keep], labels[keep]
    cur_masks = mask_pred[keep].sigmoid()  # (Qk, H, W)

    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=mask_pred.device)
    segments_info: List[Dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    winner = argmax_over_first_dim(cur_scores[:, None, None] * cur_masks)  # (H, W) index into kept queries
    stuff_segment_id: Dict[int, int] = {}
    current_id = 0
    for k in range(cur_classes.shape[0]):
        category = int(cur_classes[k].item())
        isthing = category in thing_ids
        mask = winner == k
        own = cur_masks[k] >= 0.5
        won_area, own_area = mask.sum().item(), own.sum().item()
        if within_own_mask:
            mask &= own
        if own_area == 0 or not mask.any():  # (mask is empty when it won nothing)
            continue
        if won_area / own_area < overlap_threshold:
            continue
        if not isthing and category in stuff_segment_id:
            panoptic_seg[mask] = stuff_segment_id[category]
            continue
        current_id += 1
        if not isthing:
            stuff_segment_id[category] = current_id
        panoptic_seg[mask] = current_id
        segments_info.append({"id": current_id, "isthing": bool(isthing), "category_id": category})
    return panoptic_seg, segments_info


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks: detectron2's ``BitMasks.get_bounding_boxes`` (x0, y0 of the
    first pixel, x1, y1 one past the last; all zero for an empty mask) without its loop over masks.

    Args:
        masks: (N, H, W) bool.
    Returns:
        (N, 4) float32 XYXY boxes.
    """
    n, h, w = masks.shape
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0 or h == 0 or w == 0:
        return boxes
    pixels = masks.contiguous().view(torch.uint8)  # max-reductions of bytes: no bool any() loop
    columns, rows = pixels.amax(1), pixels.amax(2)  # (N, W), (N, H): 1 where the mask has a pixel
    nonempty = columns.amax(1).bool()
    # argmax returns the first maximum: the first column / row with a pixel, from either end
    found = torch.stack([columns.argmax(1), rows.argmax(1),
                         w - columns.flip(1).argmax(1), h - rows.flip(1).argmax(1)], dim=1)
    boxes[nonempty] = found[nonempty].float()
    return boxes


def instance_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    num_classes: int,
    topk: int,
    thing_ids: Optional[Set[int]] = None,
) -> Instances:
    """The ``topk`` most likely (query, class) pairs as instances.

    Every query may yield several instances (one per class). A pair's score is its class
    probability times the mean ``sigmoid(mask)`` over the pixels where the mask logit is > 0.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits, or a :class:`QueryMasks`.
        num_classes: K.
        topk: maximum number of instances (e.g. TEST.DETECTIONS_PER_IMAGE); capped at Q*K.
        thing_ids: if given, pairs whose class is not in it are dropped (after the top-k), as in
            panoptic datasets where only thing classes are instances.

    Returns:
        Instances of image size (H, W), sorted by decreasing score, with pred_masks (N, H, W)
        bool, pred_boxes (tight boxes of the masks, XYXY; zeros for an empty mask), scores (N,)
        and pred_classes (N,) int64.
    """
    probs = class_probabilities(mask_cls, num_classes)  # (Q, K)
    k = min(topk, probs.numel())
    class_scores, flat_idx = probs.flatten().topk(k, sorted=True)
    labels = flat_idx % num_classes
    queries = flat_idx // num_classes
    if thing_ids is not None:
        is_thing = torch.tensor([int(c) in thing_ids for c in labels.tolist()],
                                dtype=torch.bool, device=labels.device)
        class_scores, labels, queries = class_scores[is_thing], labels[is_thing], queries[is_thing]

    # a query's mask, its score and its box do not depend on the class: computed once per query
    unique, inverse = torch.unique(queries, return_inverse=True)
    logits = mask_pred[unique]  # (U, H, W)
    masks = logits > 0
    pixels = masks.flatten(1).sum(1, dtype=torch.int32)  # exact; summing bools as int64 copies
    mask_scores = (logits.sigmoid().mul_(masks).flatten(1).sum(1) / (pixels + 1e-6))[inverse]
    scores = class_scores * mask_scores
    order = scores.argsort(descending=True, stable=True)
    picked = inverse[order]

    result = Instances(tuple(mask_pred.shape[-2:]))
    result.pred_masks = masks[picked]
    boxes = mask_boxes(masks)
    result.pred_boxes = Boxes(boxes[picked])
    result.scores = scores[order]
    result.pred_classes = labels[order]
    return result


# ----------------------------------------------------------------------------- per task
# What each task of :mod:`maskformer_d2.inference.tasks` computes from an :class:`ImagePrediction`.
def semantic_output(p: ImagePrediction, options: InferenceOptions) -> Tensor:
    """(K, height, width) semantic scores (the model's "sem_seg")."""
    if options.sem_seg_postprocess_before_inference:
        return semantic_inference(p.mask_cls, p.mask_pred)
    if "padded_mask_pred" in p.__dict__:  # another task already upsampled every query
        return p.resize(semantic_inference(p.mask_cls, p.padded_mask_pred))
    return p.resize(upsampled_semantic_inference(p.mask_cls, p.low_res_mask_pred, p.padded_size))


def panoptic_output(p: ImagePrediction, options: InferenceOptions) -> Tuple[Tensor, List[Dict]]:
    """((height, width) int32 segment ids, segments_info) (the model's "panoptic_seg")."""
    return panoptic_inference(p.mask_cls, p.lazy_mask_pred, p.num_classes, options.thing_ids,
                              options.object_mask_threshold, options.overlap_threshold,
                              options.panoptic_segment_within_own_mask)


def instance_output(p: ImagePrediction, options: InferenceOptions) -> Instances:
    """Instances at height x width (the model's "instances")."""
    return instance_inference(p.mask_cls, p.lazy_mask_pred, p.num_classes,
                              options.detections_per_image,
                              options.thing_ids if options.instance_things_only else None)
