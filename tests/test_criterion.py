"""The mask losses and SetCriterion: what each loss is worth on cases known by hand."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from maskformer_d2 import add_maskformer_config
from maskformer_d2.modeling.criterion import SetCriterion, build_weight_dict
from maskformer_d2.modeling.losses import (
    batch_dice_cost,
    batch_sigmoid_focal_cost,
    dice_loss,
    pad_masks_to_common_size,
    sigmoid_focal_loss,
)
from maskformer_d2.modeling.matcher import HungarianMatcher

LN2 = math.log(2.0)


# ---------------------------------------------------------------- the loss functions


def test_losses_on_a_hand_computed_case():
    """Two pixels with p = 0.5, target (1, 0)."""
    logits, target = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    # dice: 1 - (2 * 0.5 + 1) / (1 + 1 + 1)
    assert dice_loss(logits, target, 1).item() == pytest.approx(1 / 3)
    # focal: positive 0.25 * 0.5^2 * ln2, negative 0.75 * 0.5^2 * ln2, averaged over 2 pixels
    assert sigmoid_focal_loss(logits, target, 1).item() == pytest.approx(0.125 * LN2)
    # divided by num_masks
    assert sigmoid_focal_loss(logits, target, 4).item() == pytest.approx(0.125 * LN2 / 4)
    # two masks are summed
    assert dice_loss(logits.repeat(2, 1), target.repeat(2, 1), 1).item() == pytest.approx(2 / 3)


def test_focal_loss_is_the_retinanet_formula():
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(3, 50, generator=g)
    t = (torch.rand(3, 50, generator=g) > 0.5).float()
    p = x.sigmoid()
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    want = (alpha_t * ce * (1 - p_t) ** 2).mean(1).sum() / 2.5
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 2.5), want)


def test_pairwise_costs_equal_the_losses_of_each_pair():
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(4, 30, generator=g)
    t = (torch.rand(3, 30, generator=g) > 0.5).float()
    dice, focal = batch_dice_cost(x, t), batch_sigmoid_focal_cost(x, t)
    assert dice.shape == focal.shape == (4, 3)
    for n in range(4):
        for m in range(3):
            assert dice[n, m].item() == pytest.approx(dice_loss(x[n:n + 1], t[m:m + 1], 1).item(), rel=1e-5)
            assert focal[n, m].item() == pytest.approx(
                sigmoid_focal_loss(x[n:n + 1], t[m:m + 1], 1).item(), rel=1e-5)


def test_pad_masks_to_common_size():
    a, b = torch.ones(1, 2, 3, dtype=torch.bool), torch.ones(2, 4, 1, dtype=torch.bool)
    pa, pb = pad_masks_to_common_size([a, b])
    assert pa.shape == (1, 4, 3) and pb.shape == (2, 4, 3) and pa.dtype == torch.bool
    assert pa.sum() == 6 and pa[:, :2].all() and pb.sum() == 8 and pb[:, :, :1].all()


# ---------------------------------------------------------------- SetCriterion

K = 3  # classes


def make_criterion(eos_coef=0.1, num_aux=0):
    return SetCriterion(K, HungarianMatcher(1, 20, 1), build_weight_dict(1, 20, 1, num_aux), eos_coef)


def two_targets(size=8):
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, : size // 2] = True
    masks[1, :, : size // 4] = True
    masks[1, : size // 2] = False
    return [{"labels": torch.tensor([2, 0]), "masks": masks}]


def perfect_outputs(targets, num_queries=5, matched=(3, 1)):
    """Mask logits +-20 equal to the targets, class logits peaked (no object for the rest)."""
    masks, labels = targets[0]["masks"], targets[0]["labels"]
    pred_masks = torch.full((1, num_queries) + masks.shape[-2:], -20.0)
    logits = torch.full((1, num_queries, K + 1), -10.0)
    logits[0, :, K] = 10.0
    for q, mask, label in zip(matched, masks, labels):
        pred_masks[0, q][mask] = 20.0
        logits[0, q, K] = -10.0
        logits[0, q, label] = 10.0
    return {"pred_logits": logits, "pred_masks": pred_masks}


def test_matched_targets_are_sampled_where_they_lie_as_their_copies_would_be():
    from maskformer_d2.modeling.criterion import _sample_matched_targets
    from maskformer_d2.modeling.point_sampling import sample_masks
    g = torch.Generator().manual_seed(0)
    targets = [(torch.rand(5, 24, 32, generator=g) > 0.5).float(), (torch.rand(3, 24, 32, generator=g) > 0.5).float()]
    # image 0: 4 of its 5 targets matched, out of order; image 1: all 3
    indices = [(torch.tensor([7, 2, 9, 0]), torch.tensor([3, 0, 4, 1])),
               (torch.tensor([1, 5, 6]), torch.tensor([2, 1, 0]))]
    points = torch.rand(7, 50, 2, generator=g)
    copies = torch.cat([m[j] for m, (_, j) in zip(targets, indices)])
    expected = sample_masks(copies[:, None], points)[:, 0]
    got = _sample_matched_targets(targets, indices, points)
    assert got.shape == (7, 50) and torch.equal(got, expected)
    assert 0 < got.mean() < 1 and not torch.equal(got[0], got[1])


def test_perfect_prediction_has_almost_zero_loss():
    targets = two_targets()
    losses = make_criterion()(perfect_outputs(targets), targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in losses.values())
    assert losses["loss_dice"].item() < 1e-6
    assert losses["loss_mask"].item() < 1e-6
    assert losses["loss_ce"].item() < 1e-7  # every query: log(1 + 3 e^-20)


def test_wrong_prediction_has_large_loss():
    targets = two_targets()
    good = perfect_outputs(targets)
    # every query: a class shifted by one and a mask that misses both targets
    wrong_masks = torch.full_like(good["pred_masks"], -20.0)
    wrong_masks[..., 4:, 4:] = 20.0
    bad = {"pred_logits": good["pred_logits"].roll(1, dims=-1), "pred_masks": wrong_masks}
    losses = make_criterion()(bad, targets)
    assert losses["loss_dice"].item() > 0.9
    assert losses["loss_mask"].item() > 1.0
    assert losses["loss_ce"].item() > 10.0


def test_mask_losses_upsample_predictions_bilinearly_to_the_target_size():
    targets = two_targets(size=8)
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 5, K + 1, generator=g), "pred_masks": torch.randn(1, 5, 4, 4, generator=g)}
    crit = make_criterion()
    ((q, t),) = crit.matcher(outputs, targets)
    losses = crit(outputs, targets)
    up = F.interpolate(outputs["pred_masks"][0, q][:, None], size=(8, 8), mode="bilinear", align_corners=False)
    src, tgt = up.flatten(1), targets[0]["masks"][t].flatten(1).float()
    torch.testing.assert_close(losses["loss_mask"], sigmoid_focal_loss(src, tgt, 2))
    torch.testing.assert_close(losses["loss_dice"], dice_loss(src, tgt, 2))


@pytest.mark.parametrize("eos_coef", [0.1, 1.0])
def test_no_object_weight_in_the_cross_entropy(eos_coef):
    """Query 0 is matched to class 1, query 1 is unmatched: CE = (l0 + eos * l1) / (1 + eos)."""
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    pred_masks = torch.stack([torch.where(masks[0], 20.0, -20.0), torch.full((4, 4), -20.0)])[None]
    logits = torch.tensor([[[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]])
    crit = make_criterion(eos_coef)
    loss = crit({"pred_logits": logits, "pred_masks": pred_masks}, [{"labels": torch.tensor([1]), "masks": masks}])
    l0 = -math.log(math.exp(2) / (3 + math.exp(2) + math.e - 1))  # -log softmax(q0)[1]
    l1 = -math.log(1 / (3 + math.e))  # -log softmax(q1)[K]
    assert loss["loss_ce"].item() == pytest.approx((l0 + eos_coef * l1) / (1 + eos_coef), rel=1e-6)


def test_empty_weight_buffer():
    crit = make_criterion(eos_coef=0.25)
    assert crit.empty_weight.tolist() == [1.0, 1.0, 1.0, 0.25]
    assert "empty_weight" in crit.state_dict()
    assert not any(n == "empty_weight" for n, _ in crit.named_parameters())


def test_mask_losses_are_divided_by_the_number_of_target_masks():
    t1 = two_targets()
    t2 = [{"labels": t1[0]["labels"][:1], "masks": t1[0]["masks"][:1]}]
    g = torch.Generator().manual_seed(2)
    outputs = {"pred_logits": torch.randn(2, 5, K + 1, generator=g), "pred_masks": torch.randn(2, 5, 8, 8, generator=g)}
    crit = make_criterion()
    both = crit(outputs, t1 + t2)
    first = crit({k: v[:1] for k, v in outputs.items()}, t1)
    second = crit({k: v[1:] for k, v in outputs.items()}, t2)
    # per-image sums are divided by 2 and 1 alone; together by 3
    for k in ("loss_mask", "loss_dice"):
        assert both[k].item() == pytest.approx((2 * first[k].item() + 1 * second[k].item()) / 3, rel=1e-6)


def test_targets_of_different_sizes_are_zero_padded():
    g = torch.Generator().manual_seed(3)
    outputs = {"pred_logits": torch.randn(2, 4, K + 1, generator=g), "pred_masks": torch.randn(2, 4, 4, 4, generator=g)}
    big = {"labels": torch.tensor([0]), "masks": torch.rand(1, 16, 16, generator=g) > 0.5}
    small = torch.rand(2, 12, 10, generator=g) > 0.5
    padded = torch.zeros(2, 16, 16, dtype=torch.bool)
    padded[:, :12, :10] = small
    crit = make_criterion()
    got = crit(outputs, [big, {"labels": torch.tensor([1, 2]), "masks": small}])
    want = crit(outputs, [big, {"labels": torch.tensor([1, 2]), "masks": padded}])
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_batch_without_targets():
    outputs = {"pred_logits": torch.randn(1, 4, K + 1), "pred_masks": torch.randn(1, 4, 4, 4, requires_grad=True)}
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}]
    losses = make_criterion()(outputs, empty)
    assert losses["loss_mask"].item() == losses["loss_dice"].item() == 0.0
    # every query is "no object"
    ce = F.cross_entropy(outputs["pred_logits"][0], torch.full((4,), K))
    assert losses["loss_ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    (losses["loss_mask"] + losses["loss_dice"]).backward()  # still attached to the graph
    assert outputs["pred_masks"].grad is not None


def test_deep_supervision_matches_each_layer_again():
    targets = two_targets()
    final = perfect_outputs(targets, matched=(3, 1))
    # an earlier layer whose perfect queries are others: only a fresh matching gives ~0 loss
    aux0 = perfect_outputs(targets, matched=(0, 4))
    g = torch.Generator().manual_seed(0)
    aux1 = {"pred_logits": torch.randn(1, 5, K + 1, generator=g), "pred_masks": torch.randn(1, 5, 8, 8, generator=g)}
    crit = make_criterion(num_aux=2)
    losses = crit(dict(final, aux_outputs=[aux0, aux1]), targets)
    assert set(losses) == {f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}
    assert losses["loss_dice_0"].item() < 1e-6 and losses["loss_mask_0"].item() < 1e-6
    alone = crit(aux1, targets)
    for k in ("loss_ce", "loss_mask", "loss_dice"):
        torch.testing.assert_close(losses[f"{k}_1"], alone[k])
    assert set(crit.weighted(losses)) == set(losses)


def test_losses_are_float32_and_unchanged_under_autocast():
    targets = two_targets()
    g = torch.Generator().manual_seed(4)
    outputs = {"pred_logits": torch.randn(1, 5, K + 1, generator=g), "pred_masks": torch.randn(1, 5, 4, 4, generator=g)}
    crit = make_criterion()
    plain = crit(outputs, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = crit(outputs, targets)
        half = crit({k: v.bfloat16() for k, v in outputs.items()}, targets)
    for k in plain:
        assert amp[k].dtype == half[k].dtype == torch.float32
        torch.testing.assert_close(amp[k], plain[k], rtol=0, atol=0)


@pytest.mark.parametrize("num_points", [0, 20])
def test_mask_factors_give_the_losses_and_gradients_of_the_full_masks(num_points, monkeypatch):
    """With the predictor's factors the criterion multiplies them for the matched queries only:
    the same losses and gradients as through the full (B, Q, h, w) product, which then gets no
    gradient (masks this small use the product unless the size threshold is lowered)."""
    from maskformer_d2.modeling import criterion as criterion_module
    from maskformer_d2.modeling.mask_logits import mask_factors
    assert 8 * 8 < criterion_module._FACTORS_FROM_PIXELS
    monkeypatch.setattr(criterion_module, "_FACTORS_FROM_PIXELS", 8 * 8)
    from maskformer_d2.modeling.point_sampling import PointSampling
    g = torch.Generator().manual_seed(5)
    targets = [{"labels": torch.tensor([2, 0, 1]), "masks": torch.rand(3, 16, 16, generator=g) > 0.6},
               {"labels": torch.tensor([1]), "masks": torch.rand(1, 16, 16, generator=g) > 0.3}]
    crit = SetCriterion(K, HungarianMatcher(1, 20, 1, num_points=num_points), build_weight_dict(1, 20, 1, 0),
                        0.1, point_sampling=PointSampling(num_points=num_points),
                        mask_loss="bce" if num_points else "focal")
    leaves = [torch.randn(2, 6, K + 1, generator=g), torch.randn(2, 6, 8, generator=g),
              torch.randn(2, 8, 8, 8, generator=g)]
    results = []
    for factors in (False, True):
        logits, embed, features = [t.clone().requires_grad_() for t in leaves]
        outputs = {"pred_logits": logits, "pred_masks": torch.einsum("bqc,bchw->bqhw", embed, features)}
        if factors:
            outputs.update(mask_factors(embed, features))
        torch.manual_seed(0)
        losses = crit(outputs, targets)
        *grads, grad_masks = torch.autograd.grad(sum(losses.values()), (logits, embed, features,
                                                 outputs["pred_masks"]), allow_unused=True)
        assert (grad_masks is None) == factors  # the full product is skipped with the factors
        results.append((losses, grads))
    (plain, plain_grads), (fast, fast_grads) = results
    assert set(plain) == set(fast) and plain["loss_mask"] > 0.1
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-5, atol=1e-6)
    for got, expected in zip(fast_grads, plain_grads):
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_weighted_multiplies_and_drops_unweighted_losses():
    crit = make_criterion()
    got = crit.weighted({"loss_ce": torch.tensor(2.0), "loss_mask": torch.tensor(0.5), "loss_other": torch.tensor(9.0)})
    assert {k: v.item() for k, v in got.items()} == {"loss_ce": 2.0, "loss_mask": 10.0}


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ValueError, match="unknown losses \\['boxes'\\]"):
        SetCriterion(K, HungarianMatcher(), {}, 0.1, losses=("labels", "boxes"))


def test_from_config():
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.2
    crit = SetCriterion(cfg)
    assert crit.num_classes == 7 and crit.empty_weight[-1].item() == pytest.approx(0.2)
    assert crit.weight_dict == {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0,
                                "loss_ce_0": 1.0, "loss_mask_0": 20.0, "loss_dice_0": 1.0,
                                "loss_ce_1": 1.0, "loss_mask_1": 20.0, "loss_dice_1": 1.0}
    assert crit.matcher.cost_mask == 20.0
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert set(SetCriterion(cfg).weight_dict) == {"loss_ce", "loss_mask", "loss_dice"}


@pytest.mark.parametrize("case", ["semantic_r18_small", "panoptic_swin_tiny_small"])
def test_official_losses_from_the_official_head_outputs(case, reference_dir):
    """The official model's head outputs + targets give the official (weighted) losses (1e-4)."""
    case_dir = reference_dir / "cases" / case
    outputs_np, inputs = np.load(case_dir / "outputs.npz"), np.load(case_dir / "input.npz")
    expected = json.loads((case_dir / "expected.json").read_text())["losses"]
    as_batch = lambda key: torch.from_numpy(outputs_np[key])[None]  # noqa: E731
    num_aux = sum(1 for k in outputs_np if k.startswith("aux") and k.endswith("pred_logits"))
    outputs = {
        "pred_logits": as_batch("pred_logits"),
        "pred_masks": as_batch("pred_masks"),
        "aux_outputs": [{"pred_logits": as_batch(f"aux{i}_pred_logits"), "pred_masks": as_batch(f"aux{i}_pred_masks")}
                        for i in range(num_aux)],
    }
    targets = [{"labels": torch.from_numpy(inputs["gt_labels"]), "masks": torch.from_numpy(inputs["gt_masks"])}]
    num_classes = outputs["pred_logits"].shape[-1] - 1
    crit = SetCriterion(num_classes, HungarianMatcher(1, 20, 1), build_weight_dict(1, 20, 1, num_aux), 0.1)
    # the reference weights perturbed every state-dict tensor, the criterion's buffer included
    state = torch.load(case_dir / "weights.pth", map_location="cpu", weights_only=True)
    crit.load_state_dict({"empty_weight": state["criterion.empty_weight"]})
    losses = crit.weighted(crit(outputs, targets))
    assert set(losses) == set(expected)
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-4), k
