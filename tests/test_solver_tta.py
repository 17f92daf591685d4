"""The optimiser recipe (param groups, full-model clipping) and semantic test-time augmentation."""
import pytest
import torch
from _tiny_maskformer import tiny_cfg
from detectron2.modeling import build_model
from torch import nn

from maskformer_d2.engine.solver import build_lr_scheduler, build_optimizer, param_groups
from maskformer_d2.engine.tta import SemanticSegmentorWithTTA


@pytest.fixture(scope="module")
def cfg_model():
    cfg = tiny_cfg(overrides=["SOLVER.BASE_LR", 1e-3, "SOLVER.BACKBONE_MULTIPLIER", 0.1,
                              "SOLVER.WEIGHT_DECAY", 0.05, "SOLVER.WEIGHT_DECAY_NORM", 0.0,
                              "SOLVER.WEIGHT_DECAY_EMBED", 0.0])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _group_of(groups, param):
    (g,) = [g for g in groups if any(p is param for p in g["params"])]
    return g


def test_param_groups_follow_the_official_recipe(cfg_model):
    cfg, model = cfg_model
    groups = param_groups(model, cfg)
    conv = model.backbone.res2[0].conv1.weight
    assert _group_of(groups, conv)["lr"] == pytest.approx(1e-4)  # backbone x BACKBONE_MULTIPLIER
    assert _group_of(groups, conv)["weight_decay"] == 0.05
    head_linear = model.sem_seg_head.predictor.class_embed.weight
    assert _group_of(groups, head_linear)["lr"] == pytest.approx(1e-3)
    assert _group_of(groups, head_linear)["weight_decay"] == 0.05
    query = model.sem_seg_head.predictor.query_embed.weight  # nn.Embedding: no weight decay
    assert _group_of(groups, query)["weight_decay"] == 0.0
    layer_norm = model.sem_seg_head.predictor.transformer.decoder.norm.weight
    assert _group_of(groups, layer_norm)["weight_decay"] == 0.0
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_params  # every parameter exactly once
    assert len(groups) <= 4  # grouped by (lr, wd), not one group per parameter


def test_full_model_clipping_bounds_the_total_gradient_norm():
    cfg = tiny_cfg(overrides=["SOLVER.CLIP_GRADIENTS.ENABLED", True,
                              "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
                              "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.5, "SOLVER.OPTIMIZER", "SGD",
                              "SOLVER.BASE_LR", 1.0, "SOLVER.MOMENTUM", 0.0, "SOLVER.WEIGHT_DECAY", 0.0])
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    opt.step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-4)  # lr 1 x clipped norm 0.5
    assert torch.allclose(step, step[0].expand_as(step))  # clipped as one vector: direction kept


def test_adamw_is_fused_and_matches_the_reference_update():
    """The fused kernel is an implementation detail: same update as the per-tensor AdamW, and the
    clipping still sees unscaled gradients (AMP keeps the multi-tensor path)."""
    cfg = tiny_cfg(overrides=["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                              "full_model", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.01,
                              "SOLVER.BASE_LR", 1e-2, "SOLVER.WEIGHT_DECAY", 0.1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    ref_model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    ref_model.load_state_dict(model.state_dict())
    opt = build_optimizer(cfg, model)
    assert all(g["fused"] for g in opt.param_groups)
    ref = torch.optim.AdamW(param_groups(ref_model, cfg), foreach=False)
    for _ in range(3):
        x = torch.randn(4, 8)
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            m(x).square().sum().backward()
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.01)
        opt.step()
        ref.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    amp = build_optimizer(tiny_cfg(overrides=["SOLVER.AMP.ENABLED", True]), nn.Linear(2, 2))
    assert not amp.param_groups[0]["fused"] and amp.param_groups[0]["foreach"]


def test_poly_schedule_resumes_with_a_longer_max_iter():
    """A checkpoint restores the position in the schedule; the resumed config sets its length."""
    def scheduler(max_iter):
        cfg = tiny_cfg(overrides=["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", max_iter,
                                  "SOLVER.BASE_LR", 1.0, "SOLVER.WARMUP_ITERS", 0, "SOLVER.POLY_LR_POWER", 0.9])
        return build_lr_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))

    first = scheduler(100)
    for _ in range(100):
        first.optimizer.step()
        first.step()
    resumed = scheduler(200)
    resumed.load_state_dict(first.state_dict())
    assert resumed.last_epoch == 100 and resumed.max_iters == 200
    resumed.optimizer.step()
    resumed.step()  # iteration 101 of 200 (upstream: math domain error)
    assert resumed.get_last_lr()[0] == pytest.approx((1 - 101 / 200) ** 0.9)


def test_unknown_optimizer_is_named():
    cfg = tiny_cfg(overrides=["SOLVER.OPTIMIZER", "LAMB"])
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER 'LAMB'"):
        build_optimizer(cfg, nn.Linear(2, 2))


def test_tta_averages_scales_and_unflips(cfg_model):
    cfg, model = cfg_model
    cfg = cfg.clone()
    cfg.TEST.AUG.MIN_SIZES = (64, 96)
    cfg.TEST.AUG.MAX_SIZE = 200
    cfg.TEST.AUG.FLIP = True
    model.eval()
    image = (torch.rand(3, 64, 80) * 255).round()
    with torch.no_grad():
        (tta,) = SemanticSegmentorWithTTA(cfg, model)([{"image": image, "height": 64, "width": 80}])
        views = []
        for size in (64, 96):
            resized = torch.nn.functional.interpolate(image[None], size=(size, size * 80 // 64), mode="bilinear")[0]
            for flip in (False, True):
                x = resized.flip(-1) if flip else resized
                out = model([{"image": x, "height": 64, "width": 80}])[0]["sem_seg"]
                views.append(out.flip(-1) if flip else out)
    expected = torch.stack(views).mean(0)
    assert tta["sem_seg"].shape == (7, 64, 80)
    # d2 resizes with PIL (not torch) for the views, so compare loosely but per pixel
    assert (tta["sem_seg"] - expected).abs().mean() < 0.02
    assert (tta["sem_seg"].argmax(0) == expected.argmax(0)).float().mean() > 0.9
    unflipped_only = torch.stack(views[0::2]).mean(0)
    assert (tta["sem_seg"] - unflipped_only).abs().mean() > (tta["sem_seg"] - expected).abs().mean()
