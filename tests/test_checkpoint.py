"""MaskFormerCheckpointer: strict loading with one clear error, d2's heuristics for backbones."""
import argparse
import pickle

import pytest
import torch
from _tiny_maskformer import tiny_cfg
from detectron2.modeling import build_model

from maskformer_d2.checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    MaskFormerCheckpointer,
    describe_mismatch,
    summarize_keys,
)
from maskformer_d2.convert.files import write_checkpoint, write_d2_checkpoint
from maskformer_d2.errors import UnsafeCheckpointError


@pytest.fixture(scope="module")
def trained():
    """A tiny model with non-default weights and its state dict (what a training run saves)."""
    torch.manual_seed(1)
    model = build_model(tiny_cfg())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _fresh(num_classes=7, overrides=()):
    torch.manual_seed(2)
    return build_model(tiny_cfg(num_classes, overrides))


def _save(tmp_path, state, name="model_final.pth", **extra):
    path = tmp_path / name
    torch.save({"model": state, **extra}, path)
    return str(path)


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- messages
def test_summarize_keys_groups_by_common_prefix():
    keys = [f"sem_seg_head.predictor.transformer.decoder.layers.1.{n}" for n in ("norm1.weight", "linear1.bias")]
    assert summarize_keys(keys) == "sem_seg_head.predictor.transformer.decoder.layers.1.*"
    assert summarize_keys(["criterion.empty_weight"]) == "criterion.empty_weight"
    many = [f"a{i}.b.c" for i in range(5)]
    assert summarize_keys(many, max_groups=2) == "a0.b.c, a1.b.c, ... 3 more"


def test_describe_mismatch_names_keys_shapes_and_config_key():
    msg = describe_mismatch(
        "model.pkl",
        missing=[],
        unexpected=[],
        shape_mismatches=[("sem_seg_head.predictor.class_embed.weight", (151, 256), (134, 256))],
    )
    assert msg == (
        "checkpoint model.pkl: 1 shape mismatches (sem_seg_head.predictor.class_embed.weight: "
        "checkpoint (151, 256) vs model (134, 256)); is MODEL.SEM_SEG_HEAD.NUM_CLASSES right?"
    )
    msg = describe_mismatch("m.pth", ["sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm1.weight"], [], [])
    assert msg.endswith("is MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME (and TRANSFORMER_ENC_LAYERS) right?")


# ----------------------------------------------------------------------------- full model
def test_full_checkpoint_loads_exactly(tmp_path, trained):
    model = _fresh()
    MaskFormerCheckpointer(model).load(_save(tmp_path, trained))
    assert _same(model.state_dict(), trained)


def test_wrong_num_classes_is_one_clear_error(tmp_path, trained):
    model = _fresh(num_classes=9)
    with pytest.raises(CheckpointMismatchError) as e:
        MaskFormerCheckpointer(model).load(_save(tmp_path, trained))
    msg = str(e.value)
    assert "\n" not in msg
    assert "3 shape mismatches (sem_seg_head.predictor.class_embed.weight: checkpoint (8, 64) vs model (10, 64)" in msg
    assert "keys missing" not in msg  # d2 also lists mismatched keys as missing; we do not repeat them
    assert msg.endswith("is MODEL.SEM_SEG_HEAD.NUM_CLASSES right?")


def test_missing_and_unexpected_keys_are_errors(tmp_path, trained):
    fewer = _fresh(overrides=["MODEL.MASK_FORMER.DEC_LAYERS", 1])
    with pytest.raises(CheckpointMismatchError, match=r"18 unexpected keys \(sem_seg_head\.predictor\.transformer"
                       r"\.decoder\.layers\.1\.\*\); is MODEL\.MASK_FORMER\.DEC_LAYERS right\?"):
        MaskFormerCheckpointer(fewer).load(_save(tmp_path, trained))
    partial = {k: v for k, v in trained.items() if not k.startswith("sem_seg_head.predictor.mask_embed.")}
    with pytest.raises(CheckpointMismatchError,
                       match=r"6 keys missing \(sem_seg_head\.predictor\.mask_embed\.layers\.\*\)"):
        MaskFormerCheckpointer(_fresh()).load(_save(tmp_path, partial, "partial.pth"))


def test_non_strict_keeps_d2_behaviour(tmp_path, trained):
    model = _fresh(num_classes=9)
    MaskFormerCheckpointer(model, strict=False).load(_save(tmp_path, trained))  # warns, no error
    assert torch.equal(model.state_dict()["backbone.stem.conv1.weight"], trained["backbone.stem.conv1.weight"])


def test_criterion_weight_may_be_absent(tmp_path, trained):
    state = {k: v for k, v in trained.items() if k != "criterion.empty_weight"}
    model = _fresh()
    MaskFormerCheckpointer(model).load(_save(tmp_path, state))
    assert torch.equal(model.criterion.empty_weight, torch.tensor([1.0] * 7 + [0.1]))


def test_pth_with_python_objects_needs_the_explicit_switch(tmp_path, trained, monkeypatch):
    path = _save(tmp_path, trained, extra=argparse.Namespace(lr=0.1))  # not loadable with weights_only
    monkeypatch.delenv("MASKFORMER_D2_ALLOW_UNSAFE_PICKLE", raising=False)
    with pytest.raises(UnsafeCheckpointError, match=r"refused to unpickle argparse\.Namespace"):
        MaskFormerCheckpointer(_fresh()).load(path)
    monkeypatch.setenv("MASKFORMER_D2_ALLOW_UNSAFE_PICKLE", "1")
    model = _fresh()
    extra = MaskFormerCheckpointer(model).load(path)
    assert extra["extra"].lr == 0.1
    assert _same(model.state_dict(), trained)


def test_safetensors_written_by_the_converters_load(tmp_path, trained):
    path = str(tmp_path / "model_final.safetensors")
    write_checkpoint(trained, path, author="test", matching_heuristics=False)
    model = _fresh()
    MaskFormerCheckpointer(model).load(path)
    assert _same(model.state_dict(), trained)
    backbone = {k[len("backbone."):]: v for k, v in trained.items() if k.startswith("backbone.")}
    write_checkpoint(backbone, str(tmp_path / "R-18.safetensors"), author="torchvision", matching_heuristics=True)
    model = _fresh()
    MaskFormerCheckpointer(model).load(str(tmp_path / "R-18.safetensors"))  # matched by suffix, heads as built
    assert torch.equal(model.state_dict()["backbone.stem.conv1.weight"], trained["backbone.stem.conv1.weight"])


def test_official_pickle_without_author_loads(tmp_path, trained):
    path = tmp_path / "model_final_official.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in trained.items()}}, f)
    model = _fresh()
    MaskFormerCheckpointer(model).load(str(path))
    assert _same(model.state_dict(), trained)


# ----------------------------------------------------------------------------- files
def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^checkpoint .*nope\.pth: no such file; set MODEL\.WEIGHTS"):
        MaskFormerCheckpointer(_fresh()).load(str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"PK\x03\x04garbage", b""])
def test_unreadable_file_is_one_line(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointReadError, match=r"^checkpoint .*broken\.pth: not a readable \.pth/\.pkl checkpoint"):
        MaskFormerCheckpointer(_fresh()).load(str(path))


# ----------------------------------------------------------------------------- backbone-only
def _backbone_pkl(tmp_path, state, transform=lambda k, v: (k, v)):
    """A d2 model-zoo style backbone checkpoint named without the ``backbone.`` prefix."""
    backbone = dict(transform(k[len("backbone."):], v) for k, v in state.items() if k.startswith("backbone."))
    path = str(tmp_path / "R-18.pkl")
    write_d2_checkpoint(backbone, path, author="torchvision", matching_heuristics=True)
    return path


def test_backbone_only_checkpoint_leaves_heads_as_built(tmp_path, trained):
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    MaskFormerCheckpointer(model).load(_backbone_pkl(tmp_path, trained))
    after = model.state_dict()
    for k in after:
        expected = trained[k] if k.startswith("backbone.") else before[k]
        assert torch.equal(after[k], expected), k


def test_backbone_only_checkpoint_with_wrong_shapes_is_an_error(tmp_path, trained):
    def widen(k, v):
        return (k, torch.zeros(v.shape[0] + 1, *v.shape[1:])) if k == "stem.conv1.weight" else (k, v)

    with pytest.raises(CheckpointMismatchError, match=r"1 shape mismatches \(backbone\.stem\.conv1\.weight: "
                       r"checkpoint \(65, 3, 7, 7\) vs model \(64, 3, 7, 7\)\); is MODEL\.BACKBONE\.NAME"):
        MaskFormerCheckpointer(_fresh()).load(_backbone_pkl(tmp_path, trained, widen))


def test_backbone_checkpoint_that_matches_nothing_is_an_error(tmp_path):
    path = str(tmp_path / "swin.pkl")
    write_d2_checkpoint({"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4)}, path, "third_party", True)
    with pytest.raises(CheckpointMismatchError, match=r"none of its 1 tensors \(patch_embed\.proj\.weight\) match"):
        MaskFormerCheckpointer(_fresh()).load(path)


# ----------------------------------------------------------------------------- official weights
@pytest.mark.parametrize("case", ["semantic_r18_small", "panoptic_swin_tiny_small"])
def test_official_reference_weights_load_strictly(reference_dir, case):
    from detectron2.config import get_cfg

    from maskformer_d2 import add_maskformer_config

    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(reference_dir / "cases" / case / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    path = str(reference_dir / "cases" / case / "weights.pth")
    MaskFormerCheckpointer(model).load(path)
    official = torch.load(path, weights_only=True)
    assert _same(model.state_dict(), official)
