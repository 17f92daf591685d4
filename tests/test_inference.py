"""Semantic, panoptic and instance post-processing of one image's (mask_cls, mask_pred)."""
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances

from maskformer_d2.inference.postprocessing import (
    class_probabilities,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------- semantic


def test_semantic_inference_by_hand():
    # softmax rows: q0 (0.25, 0.5 | 0.25), q1 (0.1, 0.2 | 0.7)
    mask_cls = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 7.0]]))
    # sigmoid: q0 (0.5, 0.75), q1 (0.8, 0.1) on two pixels
    mask_pred = torch.tensor([[[0.0, logit(0.75)]], [[logit(0.8), logit(0.1)]]])
    sem = semantic_inference(mask_cls, mask_pred)
    want = torch.tensor([
        [[0.25 * 0.5 + 0.1 * 0.8, 0.25 * 0.75 + 0.1 * 0.1]],
        [[0.5 * 0.5 + 0.2 * 0.8, 0.5 * 0.75 + 0.2 * 0.1]],
    ])
    assert sem.shape == (2, 1, 2)
    torch.testing.assert_close(sem, want)


def test_class_probabilities_drop_no_object_and_check_the_class_count():
    probs = class_probabilities(torch.log(torch.tensor([[1.0, 3.0, 4.0]])), num_classes=2)
    torch.testing.assert_close(probs, torch.tensor([[0.125, 0.375]]))
    with pytest.raises(ValueError, match="3 class logits per query but num_classes=3"):
        class_probabilities(torch.zeros(2, 3), num_classes=3)


# ---------------------------------------------------------------- panoptic

NUM_CLASSES = 4  # things 0, 1; stuff 2, 3
THINGS = {0, 1}
ON, OFF = 10.0, -10.0


def class_logits(category: int, peak: float) -> torch.Tensor:
    """K+1 logits: ``peak`` at ``category`` (K = no object), 0 elsewhere."""
    row = torch.zeros(NUM_CLASSES + 1)
    row[category] = peak
    return row


def mask_logits(*regions) -> torch.Tensor:
    """4x4 mask logits: ON in each (row slice, column slice), OFF elsewhere."""
    m = torch.full((4, 4), OFF)
    for rows, cols in regions:
        m[rows, cols] = ON
    return m


def panoptic_scene():
    """Seven queries on a 4x4 image; the expected outcome of each is in the comments."""
    queries = [
        (class_logits(2, 5.0), mask_logits((slice(None), 0))),  # stuff 2 -> segment 1
        (class_logits(2, 5.0), mask_logits((slice(None), 1))),  # stuff 2 again -> merged into 1
        (class_logits(0, 5.0), mask_logits((slice(0, 2), 2))),  # thing 0 -> segment 2
        (class_logits(0, 5.0), mask_logits((slice(2, 4), 2))),  # thing 0 again -> segment 3
        (class_logits(4, 5.0), mask_logits((slice(None), slice(None)))),  # no object -> dropped
        (class_logits(1, 0.5), mask_logits((slice(None), 3))),  # p = 0.29 < 0.8 -> dropped
        # stuff 3 (p = 0.83) over the whole image: wins column 3 only (4/16 of its mask)
        (class_logits(3, 3.0), mask_logits((slice(None), slice(None)))),
    ]
    return torch.stack([c for c, _ in queries]), torch.stack([m for _, m in queries])


def test_panoptic_inference_segments():
    mask_cls, mask_pred = panoptic_scene()
    seg, info = panoptic_inference(mask_cls, mask_pred, NUM_CLASSES, THINGS,
                                   object_mask_threshold=0.8, overlap_threshold=0.8)
    assert seg.dtype == torch.int32 and seg.shape == (4, 4)
    assert seg.tolist() == [[1, 1, 2, 0]] * 2 + [[1, 1, 3, 0]] * 2
    assert info == [
        {"id": 1, "isthing": False, "category_id": 2},
        {"id": 2, "isthing": True, "category_id": 0},
        {"id": 3, "isthing": True, "category_id": 0},
    ]


def test_panoptic_low_overlap_segment_is_kept_under_a_lower_threshold():
    mask_cls, mask_pred = panoptic_scene()
    seg, info = panoptic_inference(mask_cls, mask_pred, NUM_CLASSES, THINGS,
                                   object_mask_threshold=0.8, overlap_threshold=0.2)
    assert seg[:, 3].tolist() == [4] * 4
    assert info[-1] == {"id": 4, "isthing": False, "category_id": 3}


def test_panoptic_segment_is_every_pixel_its_query_wins():
    """Official MaskFormer rule (the reference data follow it): a segment takes every pixel its
    query wins, even where that query's mask is < 0.5 (Mask2Former later intersected the two)."""
    mask_cls = class_logits(1, 5.0)[None]
    mask_pred = torch.tensor([[[ON, ON], [logit(0.3), OFF]]])  # the only query wins every pixel
    seg, info = panoptic_inference(mask_cls, mask_pred, NUM_CLASSES, THINGS, 0.0, 0.0)
    assert seg.tolist() == [[1, 1], [1, 1]]
    assert info == [{"id": 1, "isthing": True, "category_id": 1}]


def test_panoptic_query_without_a_confident_pixel_is_dropped():
    mask_cls = torch.stack([class_logits(1, 5.0), class_logits(2, 5.0)])
    # q0 wins the left column but its mask is < 0.5 everywhere; q1 has the right column
    mask_pred = torch.tensor([[[logit(0.4), OFF]] * 2, [[OFF, ON]] * 2])
    seg, info = panoptic_inference(mask_cls, mask_pred, NUM_CLASSES, THINGS, 0.0, 0.0)
    assert seg.tolist() == [[0, 1], [0, 1]]
    assert info == [{"id": 1, "isthing": False, "category_id": 2}]


def test_panoptic_nothing_kept_gives_all_void():
    mask_cls, mask_pred = panoptic_scene()
    seg, info = panoptic_inference(mask_cls, mask_pred, NUM_CLASSES, THINGS, 0.99, 0.8)
    assert info == [] and seg.dtype == torch.int32 and not seg.any()


# ---------------------------------------------------------------- instance


def instance_scene():
    """Two queries, two classes, 4x4 masks.

    class probabilities (no-object dropped): q0 (0.6, 0.3), q1 (0.2, 0.7)
    q0: 2x2 block at rows 0-1, columns 0-1, sigmoid 0.75 -> mask score 0.75
    q1: rows 1-3, columns 2-3 (6 pixels), sigmoid 0.6 -> mask score 0.6
    """
    mask_cls = torch.log(torch.tensor([[6.0, 3.0, 1.0], [2.0, 7.0, 1.0]]))
    mask_pred = torch.full((2, 4, 4), -5.0)
    mask_pred[0, 0:2, 0:2] = logit(0.75)
    mask_pred[1, 1:4, 2:4] = logit(0.6)
    return mask_cls, mask_pred


def test_instance_inference_by_hand():
    mask_cls, mask_pred = instance_scene()
    # top-3 class probabilities: (q1, c1) 0.7, (q0, c0) 0.6, (q0, c1) 0.3; times the mask scores
    # (q0, c0) 0.45 > (q1, c1) 0.42 > (q0, c1) 0.225
    result = instance_inference(mask_cls, mask_pred, num_classes=2, topk=3)
    assert isinstance(result, Instances) and result.image_size == (4, 4)
    assert len(result) == 3
    torch.testing.assert_close(result.scores, torch.tensor([0.45, 0.42, 0.225]), rtol=1e-5, atol=0)
    assert result.pred_classes.tolist() == [0, 1, 1]
    assert result.pred_masks.dtype == torch.bool and result.pred_masks.shape == (3, 4, 4)
    assert torch.equal(result.pred_masks[0], mask_pred[0] > 0)
    assert torch.equal(result.pred_masks[1], mask_pred[1] > 0)
    assert torch.equal(result.pred_masks[2], mask_pred[0] > 0)
    assert isinstance(result.pred_boxes, Boxes)
    assert result.pred_boxes.tensor.tolist() == [[0, 0, 2, 2], [2, 1, 4, 4], [0, 0, 2, 2]]


def test_instance_inference_keeps_only_thing_classes_after_topk():
    mask_cls, mask_pred = instance_scene()
    result = instance_inference(mask_cls, mask_pred, num_classes=2, topk=3, thing_ids={0})
    assert result.pred_classes.tolist() == [0]
    torch.testing.assert_close(result.scores, torch.tensor([0.45]), rtol=1e-5, atol=0)


def test_instance_inference_topk_is_capped_and_empty_masks_score_zero():
    mask_cls, mask_pred = instance_scene()
    mask_pred[1] = -5.0  # q1's mask is empty
    result = instance_inference(mask_cls, mask_pred, num_classes=2, topk=100)
    assert len(result) == 4  # Q * K
    torch.testing.assert_close(result.scores, torch.tensor([0.45, 0.225, 0.0, 0.0]), rtol=1e-5, atol=0)
    assert result.pred_classes.tolist()[:2] == [0, 1]
    assert result.pred_boxes.tensor[2:].abs().sum() == 0


# ---------------------------------------------------------------- official reference


@pytest.mark.parametrize("case", ["semantic_r18_small", "panoptic_swin_tiny_small"])
def test_official_post_processing_of_the_official_head_outputs(case, reference_dir):
    """Upsampled official mask logits -> the official sem_seg (1e-5) and panoptic output (equal)."""
    import json

    import numpy as np
    import torch.nn.functional as F

    case_dir = reference_dir / "cases" / case
    out = np.load(case_dir / "outputs.npz")
    mask_cls = torch.from_numpy(out["pred_logits"])
    # the padded image is 96x128 = the image, so no crop / resize is involved
    mask_pred = F.interpolate(torch.from_numpy(out["pred_masks"])[None], size=(96, 128),
                              mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred),
                               torch.from_numpy(out["sem_seg"]), rtol=0, atol=1e-5)
    if "panoptic_seg" not in out:
        return
    # COCO panoptic: the 80 thing classes come first among the 133 contiguous ids
    seg, info = panoptic_inference(mask_cls, mask_pred, 133, set(range(80)), 0.0, 0.5)
    assert torch.equal(seg, torch.from_numpy(out["panoptic_seg"]))
    assert info == json.loads((case_dir / "expected.json").read_text())["segments_info"]
