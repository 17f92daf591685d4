"""Folding frozen BatchNorm into convolutions: same outputs in inference, untouched training."""
import copy

import torch
from detectron2.config import get_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_resnet_backbone
from torch import nn

from maskformer_d2.modeling.batchnorm_folding import (
    BatchNormFoldingConv2d,
    enable_batchnorm_folding,
)


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics (the defaults 1/0/0/1 would make folding almost a no-op)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5


def _resnet(norm: str, depth: int = 18) -> nn.Module:
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    torch.manual_seed(0)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    _randomise_norms(model)
    return model


def _max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def test_folded_backbone_equals_the_unfolded_one():
    for norm in ("FrozenBN", "BN"):
        model = _resnet(norm)
        reference = copy.deepcopy(model)
        assert enable_batchnorm_folding(model) == 20  # 17 convs + 3 shortcut projections
        x = torch.randn(2, 3, 64, 96)
        with torch.no_grad():
            expected, folded = reference(x), model(x)
        assert _max_rel_diff(folded, expected) < 1e-5
        # the fold really happened: the folded path's weights differ from the raw ones
        conv = next(m for m in model.modules() if isinstance(m, BatchNormFoldingConv2d))
        weight, bias = conv._folded()
        assert not torch.allclose(weight, conv.weight)
        assert model.state_dict().keys() == reference.state_dict().keys()


def test_folding_follows_weight_changes_and_leaves_training_alone():
    model = _resnet("FrozenBN")
    enable_batchnorm_folding(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # caches the folded weights
        _randomise_norms(model, seed=1)  # statistics change (e.g. a checkpoint is loaded) ...
        reference = _resnet("FrozenBN")
        _randomise_norms(reference, seed=1)
        reference.load_state_dict(model.state_dict())
        assert _max_rel_diff(model(x), reference(x)) < 1e-5  # ... and the fold follows
    # with autograd on, the unfolded path runs: gradients reach the convolution weights
    model.train()
    out = model(x.requires_grad_())["res5"].sum()
    out.backward()
    conv = model.res5[-1].conv2  # (the stem and res2 are frozen by FREEZE_AT 2)
    assert isinstance(conv, BatchNormFoldingConv2d)
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_folding_follows_batchnorm_statistics_moved_by_training():
    """A BatchNorm moves its running statistics inside its kernel, and the fused AdamW (our CPU
    optimiser) its weights, neither with a version bump: an evaluation after more training steps
    (as periodic evaluation does) must use the new ones."""
    model = _resnet("BN")
    model.train()  # FREEZE_AT 2: res3-res5 keep training BatchNorms
    enable_batchnorm_folding(model)
    x = torch.randn(2, 3, 64, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(x)["res5"]
        model.train()
        return out

    first = evaluate()  # caches the folded weights
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 64, 64) * 3 + 1)["res5"].mean().backward()
        optimizer.step()
    second = evaluate()
    unfolded = copy.deepcopy(model).eval()
    for m in unfolded.modules():
        if isinstance(m, BatchNormFoldingConv2d):
            m.__class__ = Conv2d
    with torch.no_grad():
        expected = unfolded(x)["res5"]
    assert (second - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (second - first).abs().max() > 1e-2 * expected.abs().max()  # training did change it


def test_only_convolutions_with_a_batchnorm_fold():
    plain = Conv2d(3, 4, 3)
    grouped = Conv2d(3, 4, 3, norm=nn.GroupNorm(2, 4))
    batch = Conv2d(3, 4, 3, norm=nn.BatchNorm2d(4))
    assert enable_batchnorm_folding(nn.Sequential(plain, grouped, batch)) == 1
    assert type(plain) is Conv2d and type(grouped) is Conv2d
    assert type(batch) is BatchNormFoldingConv2d
