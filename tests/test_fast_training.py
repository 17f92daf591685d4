"""The faster training paths compute what the straightforward ones do.

* the fused dense mask loss (``upsampled_mask_losses``) equals upsampling with ``F.interpolate``
  and the plain focal/dice losses, in value and gradient;
* the batched matcher gives every image the assignment of matching it alone;
* the point-sampled loss equals a brute-force computation at fixed points, and its random
  draws follow the documented (official Mask2Former) order.
"""
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from maskformer_d2.modeling.criterion import SetCriterion
from maskformer_d2.modeling.losses import (
    dice_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    upsampled_mask_losses,
)
from maskformer_d2.modeling.matcher import HungarianMatcher
from maskformer_d2.modeling.point_sampling import PointSampling


def _upsampled(x, size):
    return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def test_fused_dense_loss_equals_upsample_then_losses():
    g, tol = torch.Generator().manual_seed(0), 1e-5
    low = (torch.randn(5, 12, 20, generator=g) * 4).requires_grad_()
    targets = torch.rand(5, 48, 80, generator=g) > 0.6
    focal, dice = upsampled_mask_losses(low, targets, num_masks=3.0)
    (1.3 * focal + 0.7 * dice).backward()
    fused_grad, low.grad = low.grad.clone(), None

    low64 = low.detach().double().requires_grad_()
    up = _upsampled(low64, (48, 80)).flatten(1)
    # the reference in float64 (the plain losses cast to float32, so build them by hand)
    p, t = up.sigmoid(), targets.flatten(1).double()
    ce = F.binary_cross_entropy_with_logits(up, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    ref_focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).mean(1).sum() / 3.0
    ref_dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).sum() / 3.0
    (1.3 * ref_focal + 0.7 * ref_dice).backward()
    focal, dice, ref_focal, ref_dice = (v.detach() for v in (focal, dice, ref_focal, ref_dice))
    assert abs(float(focal) - float(ref_focal)) <= tol * float(ref_focal)
    assert abs(float(dice) - float(ref_dice)) <= tol * float(ref_dice)
    scale = float(low64.grad.abs().max())
    assert float((fused_grad.double() - low64.grad).abs().max()) <= tol * scale
    # and the plain float32 losses agree too
    up32 = _upsampled(low.detach().float(), (48, 80)).flatten(1)
    assert torch.isclose(sigmoid_focal_loss(up32, targets.flatten(1), 3.0), focal.float(), rtol=1e-5)
    assert torch.isclose(dice_loss(up32, targets.flatten(1), 3.0), dice.float(), rtol=1e-5)


def _random_batch(seed, batch=3, queries=12, classes=6, size=(16, 24), counts=(4, 0, 7)):
    g = torch.Generator().manual_seed(seed)
    outputs = {"pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
               "pred_masks": torch.randn(batch, queries, *size, generator=g) * 3}
    targets = [{"labels": torch.randint(0, classes, (n,), generator=g),
                "masks": torch.rand(n, 4 * size[0], 4 * size[1], generator=g) > 0.5}
               for n in counts[:batch]]
    return outputs, targets


@pytest.mark.parametrize("seed", range(5))
def test_batched_matcher_equals_matching_each_image_alone(seed):
    outputs, targets = _random_batch(seed)
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    batched = matcher(outputs, targets)
    for b, (target, (rows, cols)) in enumerate(zip(targets, batched)):
        if len(target["labels"]) == 0:
            assert len(rows) == len(cols) == 0
            continue
        cost = matcher.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b],
                                   target["labels"], target["masks"])
        expected_rows, expected_cols = linear_sum_assignment(cost.numpy())
        assert rows.tolist() == expected_rows.tolist() and cols.tolist() == expected_cols.tolist()
        # ... and the batched cost entries are that image's costs
        full = matcher.batch_cost_matrix(
            outputs["pred_logits"][b:b + 1], outputs["pred_masks"][b:b + 1].flatten(2),
            target["labels"][None],
            F.interpolate(target["masks"][:, None].float(), size=(16, 24), mode="nearest").flatten(1)[None],
        )[0]
        torch.testing.assert_close(full, cost)


def test_batched_point_matcher_equals_matching_each_image_at_its_points():
    outputs, targets = _random_batch(1)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=50,
                               mask_cost="bce")
    torch.manual_seed(7)
    batched = matcher(outputs, targets)
    torch.manual_seed(7)
    for b, (target, (rows, cols)) in enumerate(zip(targets, batched)):
        points = torch.rand(1, 50, 2)  # one draw per image, in image order
        n = len(target["labels"])
        if n == 0:
            assert len(rows) == 0
            continue
        pred = F.grid_sample(outputs["pred_masks"][b][:, None], 2 * points[:, None].expand(12, -1, -1, -1) - 1,
                             align_corners=False)[:, 0, 0]  # (Q, P)
        tgt = F.grid_sample(target["masks"][:, None].float(), 2 * points[:, None].expand(n, -1, -1, -1) - 1,
                            align_corners=False)[:, 0, 0]  # (n, P)
        prob = outputs["pred_logits"][b].softmax(-1)
        ce = (F.softplus(-pred) @ tgt.T + F.softplus(pred) @ (1 - tgt).T) / 50
        ps = pred.sigmoid()
        dice = 1 - (2 * ps @ tgt.T + 1) / (ps.sum(1)[:, None] + tgt.sum(1)[None] + 1)
        cost = -2.0 * prob[:, target["labels"]] + 5.0 * ce + 5.0 * dice
        expected_rows, expected_cols = linear_sum_assignment(cost.numpy())
        assert rows.tolist() == expected_rows.tolist() and cols.tolist() == expected_cols.tolist()


def test_point_loss_equals_brute_force_at_fixed_points(monkeypatch):
    """Hand-made 2x2 logits, fixed points: bilinear values and the losses by hand."""
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 4.0]]], requires_grad=True)  # (1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # points at pixel centres (0.25/0.75) and between them (0.5): x, y in [0, 1]
    points = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.5, 0.25], [0.5, 0.5]]])
    monkeypatch.setattr("maskformer_d2.modeling.criterion.loss_points", lambda src, sampling: points)
    criterion = SetCriterion(num_classes=2, matcher=None, weight_dict={}, eos_coef=0.1,
                             point_sampling=PointSampling(num_points=4), mask_loss="bce")
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    losses = criterion.loss_masks({"pred_masks": logits[None]}, [{"masks": target}], indices, 1.0)
    x = torch.tensor([0.0, 2.0, 1.0, 1.0])  # bilinear: centres exact, (0.5, 0.5) = mean of all
    t = torch.tensor([1.0, 1.0, 1.0, 0.5])
    bce = -(t * torch.log(torch.sigmoid(x)) + (1 - t) * torch.log(1 - torch.sigmoid(x))).mean()
    p = torch.sigmoid(x)
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert torch.isclose(losses["loss_mask"], bce, rtol=1e-6)
    assert torch.isclose(losses["loss_dice"], dice, rtol=1e-6)
    assert torch.isclose(sigmoid_ce_loss(x[None], t[None], 1.0), bce, rtol=1e-6)


def test_point_sampling_draws_in_the_documented_order():
    """Per decoder output: the matcher's (1, P, 2) per image, then the loss's
    (N, P * oversample, 2) and (N, P - int(P * importance), 2) draws."""
    outputs, targets = _random_batch(2, counts=(3, 2, 1))
    outputs["aux_outputs"] = [{k: v.clone() for k, v in outputs.items()}]
    sampling = PointSampling(num_points=20, oversample_ratio=3.0, importance_sample_ratio=0.75)
    criterion = SetCriterion(
        num_classes=6, matcher=HungarianMatcher(num_points=20, mask_cost="bce"),
        weight_dict={}, eos_coef=0.1, point_sampling=sampling, mask_loss="bce")
    draws = []
    real_rand = torch.rand

    def recording_rand(*size, **kwargs):
        draws.append(tuple(size[0]) if isinstance(size[0], (tuple, list)) else tuple(size))
        return real_rand(*size, **kwargs)

    torch.rand = recording_rand  # (ours and detectron2's sampler both call torch.rand)
    try:
        criterion(outputs, targets)
    finally:
        torch.rand = real_rand
    per_layer = [(1, 20, 2)] * 3 + [(6, 60, 2), (6, 5, 2)]
    assert draws == per_layer * 2

    # the same seed gives the same losses; another seed other ones
    def losses(seed):
        torch.manual_seed(seed)
        return criterion(outputs, targets)
    a, b, c = losses(3), losses(3), losses(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in ("loss_mask", "loss_dice"))


def test_dense_criterion_needs_the_focal_loss():
    with pytest.raises(ValueError, match="needs TRAIN_NUM_POINTS > 0"):
        SetCriterion(num_classes=2, matcher=None, weight_dict={}, eos_coef=0.1, mask_loss="bce")
