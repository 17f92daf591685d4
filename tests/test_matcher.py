"""HungarianMatcher: the cheapest one-to-one assignment of targets to queries."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from maskformer_d2 import add_maskformer_config
from maskformer_d2.modeling.matcher import HungarianMatcher


def pair_cost(logits, mask_logits, label, mask, w_class, w_mask, w_dice):
    """Matching cost of one (query, target) pair, written out element by element."""
    prob = logits.softmax(-1)[label]
    x = mask_logits.flatten().double()
    t = mask.flatten().double()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha_t * ce * (1 - p_t) ** 2).mean()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return -w_class * prob.item() + w_mask * focal.item() + w_dice * dice.item()


def random_problem(seed, num_queries=4, num_targets=3, num_classes=5, size=8):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(1, num_queries, num_classes + 1, generator=g),
        "pred_masks": 3 * torch.randn(1, num_queries, size, size, generator=g),
    }
    targets = [{
        "labels": torch.randint(0, num_classes, (num_targets,), generator=g),
        "masks": torch.rand(num_targets, size, size, generator=g) > 0.5,
    }]
    return outputs, targets


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_the_brute_force_optimum(seed):
    outputs, targets = random_problem(seed)
    weights = (1.0, 20.0, 1.0)
    matcher = HungarianMatcher(*weights)
    ((pred_idx, tgt_idx),) = matcher(outputs, targets)

    labels, masks = targets[0]["labels"], targets[0]["masks"]
    q, n = outputs["pred_logits"].shape[1], len(labels)
    cost = [[pair_cost(outputs["pred_logits"][0, i], outputs["pred_masks"][0, i], labels[j], masks[j],
                       *weights) for j in range(n)] for i in range(q)]
    # the matcher's cost matrix is the pairwise cost
    matrix = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0], labels, masks)
    torch.testing.assert_close(matrix, torch.tensor(cost, dtype=torch.float32), rtol=1e-5, atol=1e-5)

    # every way of giving the n targets to n distinct queries
    best_total, best = min(
        (sum(cost[qi][j] for j, qi in enumerate(queries)), queries)
        for queries in itertools.permutations(range(q), n)
    )
    assert pred_idx.dtype == tgt_idx.dtype == torch.int64
    assert len(pred_idx) == len(tgt_idx) == n
    assert sorted(tgt_idx.tolist()) == list(range(n))
    assert len(set(pred_idx.tolist())) == n
    assert sum(cost[i][j] for i, j in zip(pred_idx.tolist(), tgt_idx.tolist())) == pytest.approx(best_total)
    assert {j: i for i, j in zip(pred_idx.tolist(), tgt_idx.tolist())} == dict(enumerate(best))


def test_each_image_is_matched_on_its_own():
    (o1, t1), (o2, t2) = random_problem(1), random_problem(2)
    batch = {k: torch.cat([o1[k], o2[k]]) for k in o1}
    got = HungarianMatcher()(batch, t1 + t2)
    want = HungarianMatcher()(o1, t1) + HungarianMatcher()(o2, t2)
    for (gi, gj), (wi, wj) in zip(got, want):
        assert gi.tolist() == wi.tolist() and gj.tolist() == wj.tolist()


def test_perfect_queries_are_found_among_distractors():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4] = True
    masks[1, :, :2] = True
    pred_masks = torch.full((5, 8, 8), -20.0)
    pred_masks[3][masks[0]] = 20.0
    pred_masks[1][masks[1]] = 20.0
    logits = torch.zeros(5, 4)
    logits[3, 2] = logits[1, 0] = 10.0
    targets = [{"labels": torch.tensor([2, 0]), "masks": masks}]
    ((pred_idx, tgt_idx),) = HungarianMatcher()({"pred_logits": logits[None], "pred_masks": pred_masks[None]}, targets)
    assert dict(zip(tgt_idx.tolist(), pred_idx.tolist())) == {0: 3, 1: 1}
    assert pred_idx.tolist() == [1, 3]  # queries in increasing order


def test_target_masks_are_downsampled_nearest_to_the_prediction_size():
    """A 16x16 target compared with 8x8 predictions keeps pixels (2i, 2j) only (official rule)."""
    mask_hr = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask_hr[0, 1::2, :] = True  # odd rows only: vanishes under nearest downsampling
    mask_lr = torch.zeros(1, 8, 8, dtype=torch.bool)
    logits, pred = torch.randn(3, 4), torch.randn(3, 8, 8)
    matcher = HungarianMatcher()
    labels = torch.tensor([1])
    torch.testing.assert_close(matcher.cost_matrix(logits, pred, labels, mask_hr),
                               matcher.cost_matrix(logits, pred, labels, mask_lr))
    mask_hr[0, 0::2, 0::2] = True
    torch.testing.assert_close(matcher.cost_matrix(logits, pred, labels, mask_hr),
                               matcher.cost_matrix(logits, pred, labels, ~mask_lr))


def test_targets_of_different_sizes_are_zero_padded():
    outputs, _ = random_problem(3, num_queries=4, size=8)
    outputs = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in outputs.items()}
    small = torch.rand(2, 12, 16) > 0.5
    padded = torch.zeros(2, 16, 16, dtype=torch.bool)
    padded[:, :12] = small
    labels = torch.tensor([0, 1])
    big = {"labels": labels, "masks": torch.rand(2, 16, 16) > 0.5}
    got = HungarianMatcher()(outputs, [big, {"labels": labels, "masks": small}])
    want = HungarianMatcher()(outputs, [big, {"labels": labels, "masks": padded}])
    assert [(i.tolist(), j.tolist()) for i, j in got] == [(i.tolist(), j.tolist()) for i, j in want]


def test_image_without_targets_gets_empty_indices():
    outputs, targets = random_problem(0)
    outputs = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in outputs.items()}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}
    (i0, j0), (i1, j1) = HungarianMatcher()(outputs, [empty] + targets)
    assert i0.shape == j0.shape == (0,) and i0.dtype == j0.dtype == torch.int64
    assert len(i1) == 3


@pytest.mark.parametrize("field,value,term", [
    ("pred_masks", math.nan, "mask \\(focal\\)"),
    ("pred_masks", math.inf, "mask \\(focal\\)"),
    ("pred_logits", math.nan, "class"),
])
def test_non_finite_cost_names_the_image_and_the_term(field, value, term):
    outputs, targets = random_problem(0)
    outputs = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in outputs.items()}
    outputs[field][1, 2].view(-1)[0] = value
    with pytest.raises(ValueError, match=f"image 1 .*the {term} cost has non-finite"):
        HungarianMatcher()(outputs, targets * 2)


def test_cost_is_float32_and_unchanged_under_autocast():
    outputs, targets = random_problem(4)
    args = (outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"], targets[0]["masks"])
    plain = HungarianMatcher().cost_matrix(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = HungarianMatcher().cost_matrix(*args)
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, plain, rtol=0, atol=0)


def test_batch_size_mismatch_is_an_error():
    outputs, targets = random_problem(0)
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        HungarianMatcher()(outputs, targets * 2)


def test_all_zero_weights_are_rejected():
    with pytest.raises(ValueError, match="all 0"):
        HungarianMatcher(0, 0, 0)


def test_from_config_uses_the_loss_weights():
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 7.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 3.0
    matcher = HungarianMatcher(cfg)
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (1.0, 7.0, 3.0)
