"""Specification of the Swin backbone (maskformer_d2/modeling/backbone/swin.py).

* its state dict has exactly the official ``backbone.*`` keys and shapes (Swin-T and Swin-L),
* its numbers equal an independent Swin implementation (detectron2's own, the same lineage as the
  official MaskFormer one) for padded, shifted, odd-sized and APE variants,
* the official reference case's backbone weights load strictly and run,
* the pieces (relative position index, shifted-window mask, patch merging order, stochastic
  depth, activation checkpointing) behave as the paper / official code define them.
"""

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone.swin import SwinTransformer as Detectron2Swin

from maskformer_d2.config import add_maskformer_config
from maskformer_d2.modeling.backbone.swin import (
    D2SwinTransformer,
    PatchMerging,
    WindowAttention,
    drop_path,
    relative_position_index,
    shifted_window_attention_mask,
    window_partition,
    window_reverse,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7)


def _swin_cfg(config_file: Path):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.set_new_allowed(False)
    cfg.merge_from_file(str(config_file))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _backbone_manifest(path: Path) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """``backbone.*`` entries of a manifest, prefix removed: name -> (shape, dtype)."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.startswith("backbone."):
            continue
        name, shape, dtype = line.split("\t")
        entries[name[len("backbone.") :]] = (
            tuple(int(s) for s in shape.strip("()").split(",") if s.strip()),
            dtype,
        )
    return entries


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so that LayerNorms and biases are not at their trivial init."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_registered_under_official_name():
    assert BACKBONE_REGISTRY.get("D2SwinTransformer") is D2SwinTransformer


@pytest.mark.parametrize(
    "manifest, config",
    [
        (
            "ade20k-150_maskformer_swin_tiny.keys.txt",
            "ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml",
        ),
        (
            "ade20k-150_maskformer_swin_large_IN21k_384.keys.txt",
            "ade20k-150/swin/maskformer_swin_large_IN21k_384_bs16_160k_res640.yaml",
        ),
    ],
)
def test_state_dict_equals_official_manifest(reference_dir, manifest, config):
    expected = _backbone_manifest(Path(reference_dir) / "manifests" / manifest)
    cfg = _swin_cfg(REPO / "configs" / config)
    with torch.device("meta"):  # shapes only; Swin-L would take seconds to initialise on CPU
        backbone = build_backbone(cfg)
    got = {
        k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in backbone.state_dict().items()
    }
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    assert not (missing or unexpected or wrong), (
        f"missing {missing[:10]}, unexpected {unexpected[:10]}, "
        f"wrong shape/dtype {[(k, got[k], expected[k]) for k in wrong[:10]]}"
    )
    assert len(got) == (189 if "tiny" in manifest else 357)


def test_output_shape_and_strides():
    backbone = D2SwinTransformer(**SMALL, drop_path_rate=0.0, out_features=["res3", "res5"]).eval()
    assert backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res3": (32, 8),
        "res5": (128, 32),
    }
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res3": (2, 32, 8, 12),
        "res5": (2, 128, 2, 3),
    }


@pytest.mark.parametrize(
    "kwargs, size",
    [
        # 24x32 / 12x16 / 6x8 / 3x4 tokens: every stage padded to the window, res5 smaller than it
        (SMALL, (96, 128)),
        # input not a multiple of the patch nor of 2 at every stage; absolute position embedding
        (
            dict(
                embed_dim=16,
                depths=[1, 2, 1, 2],
                num_heads=[2, 2, 4, 4],
                window_size=4,
                ape=True,
                pretrain_img_size=64,
            ),
            (50, 70),
        ),
        # patch size 2 without patch norm, explicit qk scale, window 3 (shift 1)
        (
            dict(
                embed_dim=8,
                depths=[2, 2, 2, 2],
                num_heads=[1, 1, 2, 2],
                window_size=3,
                qk_scale=0.3,
                patch_size=2,
                patch_norm=False,
            ),
            (37, 61),
        ),
    ],
)
def test_matches_independent_swin_implementation(kwargs, size):
    ours = _randomised(D2SwinTransformer(drop_path_rate=0.0, **kwargs))
    theirs = Detectron2Swin(drop_path_rate=0.0, **kwargs).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same names, same shapes
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    for i in range(4):
        assert a[f"res{i + 2}"].shape == b[f"p{i}"].shape
        torch.testing.assert_close(a[f"res{i + 2}"], b[f"p{i}"], rtol=0, atol=1e-5)


def test_reference_case_backbone_loads_strictly_and_runs(reference_dir):
    case = Path(reference_dir) / "cases" / "panoptic_swin_tiny_small"
    cfg = _swin_cfg(case / "config.yaml")
    backbone = build_backbone(cfg).eval()
    weights = torch.load(case / "weights.pth", map_location="cpu")
    own = {k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")}
    result = backbone.load_state_dict(own, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    image = torch.from_numpy(np.load(case / "input.npz")["image"])
    assert tuple(image.shape) == (3, 96, 128)  # already a multiple of 32
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    x = ((image - mean) / std)[None]
    with torch.no_grad():
        out = backbone(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 24, 32),
        "res3": (1, 64, 12, 16),
        "res4": (1, 128, 6, 8),
        "res5": (1, 256, 3, 4),
    }
    sw = cfg.MODEL.SWIN
    oracle = Detectron2Swin(
        embed_dim=sw.EMBED_DIM,
        depths=sw.DEPTHS,
        num_heads=sw.NUM_HEADS,
        window_size=sw.WINDOW_SIZE,
        drop_path_rate=0.0,
    ).eval()
    oracle.load_state_dict(own, strict=True)
    with torch.no_grad():
        expected = oracle(x)
    for i in range(4):
        torch.testing.assert_close(out[f"res{i + 2}"], expected[f"p{i}"], rtol=0, atol=1e-5)


def test_relative_position_index_of_a_2x2_window():
    # entry = (dy + 1) * 3 + (dx + 1), (dy, dx) = pos(query) - pos(key), tokens in row-major order
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index((2, 2)), expected)


def test_shifted_window_mask_separates_wrapped_regions():
    # 4x4 padded map, windows 2x2, shift 1: bands rows/cols [0,2), [2,3), [3,4)
    mask = shifted_window_attention_mask(4, 4, window_size=2, shift_size=1)
    assert mask.shape == (4, 4, 4)
    assert torch.equal(mask[0], torch.zeros(4, 4))  # top-left window: one region
    # top-right window holds columns 2 and 3 = two regions split left/right
    same = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask[1], torch.where(same, 0.0, float("-inf")))
    # bottom-right window: four regions, tokens only see themselves
    assert torch.equal(mask[3], torch.where(torch.eye(4, dtype=torch.bool), 0.0, float("-inf")))


def test_minus_inf_mask_gives_the_official_minus_100_outputs():
    # the official code adds -100 across regions; in float32 that weight is subnormal or too small
    # to change a sum, so the attention outputs are the same bit for bit
    torch.manual_seed(0)
    attn = WindowAttention(dim=96, window_size=7, num_heads=3).eval()
    mask = shifted_window_attention_mask(21, 21, window_size=7, shift_size=3)  # 9 windows
    x = torch.randn(2 * 9, 49, 96) * 3
    with torch.no_grad():
        ours = attn(x, mask)
        official = attn(x, mask.masked_fill(mask.isinf(), -100.0))
        unmasked = attn(x, torch.zeros_like(mask))
    assert torch.equal(ours, official)
    assert not torch.allclose(ours, unmasked)  # the mask does change the outputs


def test_window_partition_order_and_inverse():
    x = torch.arange(2 * 4 * 6).float().view(2, 4, 6, 1)
    windows = window_partition(x, 2)
    assert windows.shape == (12, 2, 2, 1)
    assert windows[1, :, :, 0].tolist() == [[2.0, 3.0], [8.0, 9.0]]  # image 0, row 0, second window
    assert windows[3, :, :, 0].tolist() == [
        [12.0, 13.0],
        [18.0, 19.0],
    ]  # image 0, second row of windows
    assert torch.equal(window_reverse(windows, 2, 4, 6), x)


def test_patch_merging_concatenation_order():
    merging = PatchMerging(dim=1)
    seen = {}
    merging.norm.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    # a 2x2 map with value 10*row + col
    merging(torch.tensor([[[0.0], [1.0], [10.0], [11.0]]]), height=2, width=2)
    # official order x0 (even row, even col), x1 (odd, even), x2 (even, odd), x3 (odd, odd)
    assert seen["x"].flatten().tolist() == [0.0, 10.0, 1.0, 11.0]


def test_patch_merging_pads_odd_sizes():
    merging = PatchMerging(dim=4)
    out = merging(torch.randn(2, 3 * 5, 4), height=3, width=5)
    assert out.shape == (2, 2 * 3, 8)


def test_drop_path_drops_whole_samples_and_rescales():
    x = torch.ones(1000, 3, 2)
    assert drop_path(x, 0.3, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.view(1000, -1)
    assert torch.all(per_sample == per_sample[:, :1])  # one decision per sample
    assert set(per_sample[:, 0].tolist()) == {
        0.0,
        torch.tensor(1.0 / 0.75).item(),
    }  # float32 1/keep
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.05


def test_drop_path_rates_grow_linearly_over_blocks():
    backbone = D2SwinTransformer(**SMALL, drop_path_rate=0.7)
    rates = [blk.drop_path.drop_prob for layer in backbone.layers for blk in layer.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], abs=1e-6)


def test_activation_checkpointing_gives_same_values_and_gradients():
    plain = _randomised(D2SwinTransformer(**SMALL, drop_path_rate=0.0))
    ckpt = D2SwinTransformer(**SMALL, drop_path_rate=0.0, use_checkpoint=True).eval()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 32, 32)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        out = model(x)
        sum(v.square().sum() for v in out.values()).backward()
        grads.append(model.patch_embed.proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_config_errors_name_the_keys():
    with pytest.raises(ValueError, match="MODEL.SWIN.DEPTHS"):
        D2SwinTransformer(depths=[2, 2], num_heads=[3, 6, 12])
    with pytest.raises(ValueError, match="MODEL.SWIN.OUT_FEATURES"):
        D2SwinTransformer(**SMALL, out_features=["res6"])
    with pytest.raises(ValueError, match="MODEL.SWIN.NUM_HEADS"):
        D2SwinTransformer(embed_dim=10, depths=[1, 1, 1, 1], num_heads=[3, 3, 3, 3])
