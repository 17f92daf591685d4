"""tools/convert-*.py: ImageNet backbones converted to detectron2 checkpoints load and compute the same."""
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from _tiny_maskformer import tiny_cfg
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_resnet_backbone

from maskformer_d2 import add_maskformer_config
from maskformer_d2.checkpoint import MaskFormerCheckpointer

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def run_tool(name, *args):
    return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)], capture_output=True, text=True)


def _randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so a wrong rename cannot go unnoticed."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.slow
def test_torchvision_resnet_converts_to_the_same_d2_backbone(tmp_path, depth):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    _randomize_bn(tv)
    tv.eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")

    result = run_tool("convert-torchvision-to-d2.py", tmp_path / "tv.pth", tmp_path / "R.pkl")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "R.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True

    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth == 18 else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision strides in the 3x3 conv
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    # every backbone tensor comes from the file and every converted tensor has a place
    assert set(data["model"]) == set(backbone.state_dict())
    MaskFormerCheckpointer(backbone).load(str(tmp_path / "R.pkl"))
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, torch.from_numpy(data["model"][k])), k

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        trunk = torch.nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3, tv.layer4)
        expected = trunk(x)  # eval-mode BatchNorm == detectron2's FrozenBatchNorm2d
        got = backbone(x)["res5"]
    assert got.shape == expected.shape == (1, 512 * (1 if depth == 18 else 4), 2, 3)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_torchvision_converter_rejects_other_files(tmp_path):
    torch.save({"patch_embed.proj.weight": torch.zeros(1)}, tmp_path / "swin.pth")
    result = run_tool("convert-torchvision-to-d2.py", tmp_path / "swin.pth", tmp_path / "x.pkl")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: not a torchvision ResNet state dict (no 'layer1.*' keys)"
    result = run_tool("convert-torchvision-to-d2.py", tmp_path / "nope.pth", tmp_path / "x.pkl")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].endswith("nope.pth: no such file")


def _swin_cfg():
    return tiny_cfg(overrides=[
        "MODEL.BACKBONE.NAME", "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM", 32,
        "MODEL.SWIN.DEPTHS", [1, 1, 2, 1], "MODEL.SWIN.NUM_HEADS", [1, 2, 4, 8], "MODEL.SWIN.DROP_PATH_RATE", 0.0,
    ])


@pytest.mark.slow
def test_official_swin_checkpoint_converts_into_the_backbone(tmp_path):
    torch.manual_seed(0)
    trained = build_model(_swin_cfg())
    backbone_state = {
        k[len("backbone."):]: v + 0.5 if v.is_floating_point() else v
        for k, v in trained.state_dict().items() if k.startswith("backbone.")
    }
    # an ImageNet classification checkpoint of microsoft/Swin-Transformer has no per-stage output
    # norms, but a classifier, its final norm and the shifted-window masks
    official = {k: v for k, v in backbone_state.items() if not k.startswith(("norm0", "norm1", "norm2", "norm3"))}
    official.update({
        "norm.weight": torch.ones(256), "norm.bias": torch.zeros(256),
        "head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000),
        "layers.2.blocks.1.attn_mask": torch.zeros(4, 49, 49),
    })
    torch.save({"model": official}, tmp_path / "swin_tiny.pth")

    result = run_tool("convert-pretrained-swin-model-to-d2.py", tmp_path / "swin_tiny.pth", tmp_path / "swin.pkl")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "swin.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is True
    assert not any(k.startswith(("backbone.head.", "backbone.norm.")) or k.endswith("attn_mask") for k in data["model"])

    model = build_model(_swin_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    MaskFormerCheckpointer(model).load(str(tmp_path / "swin.pkl"))
    after = model.state_dict()
    for k, v in after.items():
        name = k[len("backbone."):]
        from_file = k.startswith("backbone.") and name in official
        assert torch.equal(v, official[name] if from_file else before[k]), k
    assert sum(k.startswith("backbone.") and k[9:] in official for k in after) == len(data["model"])

    # the file the official MaskFormer tool writes keeps the classifier and unprefixed names; its
    # "norm.weight" suffix-matches head keys too, which must not stop the backbone from loading
    with open(tmp_path / "official_tool.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in official.items()}, "__author__": "third_party",
                     "matching_heuristics": True}, f)
    model = build_model(_swin_cfg())
    MaskFormerCheckpointer(model).load(str(tmp_path / "official_tool.pkl"))
    assert all(torch.equal(model.state_dict()[k], after[k]) for k in after if k.startswith("backbone.layers."))
