"""Export to ONNX / TorchScript and run with ONNX Runtime: same logits, same task outputs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_maskformer import tiny_cfg
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from maskformer_d2 import add_maskformer_config
from maskformer_d2.checkpoint.safe_load import UNSAFE_PICKLE_ENV
from maskformer_d2.deploy import (
    OpenVinoNetwork,
    attach_runtime,
    export_onnx,
    export_torchscript,
    load_runtime,
)
from maskformer_d2.errors import ExportError
from maskformer_d2.inference.tasks import set_enabled_tasks

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
ALL_TASKS = ["semantic", "instance", "panoptic"]


def _tiny(overrides=()):
    torch.manual_seed(0)
    cfg = set_enabled_tasks(tiny_cfg(overrides=list(overrides)), ALL_TASKS)
    return cfg, build_model(cfg).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg, model = _tiny(["MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", 0.3])
    folder = tmp_path_factory.mktemp("export")
    export_onnx(model, str(folder / "model.onnx"))
    export_torchscript(model, str(folder / "model.ts"))
    assert not model.training  # exporting leaves the model as it was
    return cfg, model, folder


def _opt_in_for_torchscript(name, monkeypatch):
    """Loading a TorchScript file can run code from it: it needs the explicit opt-in."""
    if name.endswith(".ts"):
        monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")


def _images(*shapes):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, h, w, generator=g) for h, w in shapes]


@pytest.mark.parametrize("name,engine", [("model.onnx", "onnxruntime"), ("model.onnx", "openvino"),
                                         ("model.ts", None)])
def test_exported_network_gives_the_pytorch_logits_at_two_sizes(exported, name, engine, monkeypatch):
    cfg, model, folder = exported
    _opt_in_for_torchscript(name, monkeypatch)
    runtime = load_runtime(str(folder / name), engine=engine or "onnxruntime")
    for images in _images((64, 96), (96, 128)):  # the second size is not the export's
        with torch.no_grad():
            expected = model.network(images)
        got = runtime(images)
        for key in ("pred_logits", "pred_masks"):
            assert got[key].shape == expected[key].shape
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["model.onnx", "model.ts"])
def test_task_outputs_of_the_exported_network_equal_pytorch(exported, name, monkeypatch):
    cfg, model, folder = exported
    _opt_in_for_torchscript(name, monkeypatch)
    _, deployed = _tiny(["MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", 0.3])
    attach_runtime(deployed, str(folder / name))
    g = torch.Generator().manual_seed(2)
    inputs = [{"image": torch.rand(3, 80, 112, generator=g) * 255, "height": 160, "width": 224}]
    with torch.no_grad():
        (expected,) = model(inputs)
        (got,) = deployed(inputs)
    assert torch.equal(got["sem_seg"].argmax(0), expected["sem_seg"].argmax(0))
    assert_same_task_outputs(got, expected)


def assert_same_task_outputs(got, expected):
    """An exported network's semantic / panoptic / instance outputs are PyTorch's (logits within
    float rounding)."""
    torch.testing.assert_close(got["sem_seg"], expected["sem_seg"], rtol=0, atol=1e-4)
    assert torch.equal(got["panoptic_seg"][0], expected["panoptic_seg"][0])
    assert got["panoptic_seg"][1] == expected["panoptic_seg"][1] and expected["panoptic_seg"][1]
    # instance masks are "logit > 0": a logit within float rounding of 0 may flip
    a, b = got["instances"], expected["instances"]
    assert len(a) == len(b) > 0 and torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-4)
    assert (a.pred_masks != b.pred_masks).float().mean() < 1e-3


def _reference_model(case_dir: Path):
    """The model of an official reference case with its weights (skips when the case is absent)."""
    if not case_dir.exists():
        pytest.skip(f"reference case {case_dir} not found")
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(case_dir / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(case_dir / "weights.pth", weights_only=True))
    return model


@pytest.mark.parametrize("case", ["semantic_r18_small", "panoptic_swin_tiny_small"])
def test_reference_models_export(case, reference_dir, tmp_path):
    case_dir = reference_dir / "cases" / case
    model = _reference_model(case_dir)
    image = torch.from_numpy(np.load(case_dir / "input.npz")["image"])
    images = model.preprocess_image([{"image": image}]).tensor.contiguous()
    if "swin" not in case:  # against the official outputs directly
        export_onnx(model, str(tmp_path / "model.onnx"))
        got, expected = load_runtime(str(tmp_path / "model.onnx"))(images), np.load(case_dir / "outputs.npz")
        for key in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(got[key][0], torch.from_numpy(expected[key]), rtol=0, atol=1e-4)
        return
    # Swin: exported at one size, run at others (its shifted-window masks are computed in the
    # graph from the input size); compared with our PyTorch model, which the parity tests tie to
    # the official one
    _assert_export_runs_at_every_size(model, tmp_path)


def _assert_export_runs_at_every_size(model, tmp_path):
    g = torch.Generator().manual_seed(0)
    export_onnx(model, str(tmp_path / "model.onnx"), torch.randn(1, 3, 224, 288, generator=g))
    runtime = load_runtime(str(tmp_path / "model.onnx"))
    for size in [(224, 288), (256, 320), (96, 128), (320, 224)]:
        images = torch.randn(1, 3, *size, generator=g)
        got = runtime(images)
        with torch.no_grad():
            expected = model.network(images)
        for key in ("pred_logits", "pred_masks"):  # measured: <= 1.5e-6 and <= 4.5e-6
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)


def test_a_size_frozen_export_refuses_other_sizes_in_one_line(tmp_path):
    """A module whose traced graph only fits the export size says so (EXPORT_FIXED_SIZE); the file
    records the size and the runtime refuses another one in one line."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    model.backbone.EXPORT_FIXED_SIZE = True
    export_onnx(model, str(tmp_path / "model.onnx"), torch.zeros(1, 3, 64, 96))
    runtime = load_runtime(str(tmp_path / "model.onnx"))
    assert runtime(torch.zeros(1, 3, 64, 96))["pred_logits"].shape[0] == 1
    with pytest.raises(ExportError, match="exported for 64x96 inputs only"):
        runtime(torch.zeros(1, 3, 96, 96))


@pytest.mark.slow
def test_mask2former_reference_model_exports_at_any_size(reference_dir, tmp_path):
    """Mask2Former (Swin, deformable pixel decoder, masked attention) through ONNX Runtime at the
    export size and at others: the exported graph computes our network's function."""
    model = _reference_model(reference_dir / "mask2former" / "cases" / "m2f_panoptic_swin_small")
    _assert_export_runs_at_every_size(model, tmp_path)


def test_openvino_in_bf16_runs_the_same_network_approximately(exported):
    """OpenVINO's bf16 precision (fast on CPUs with bf16 units) is an approximation: the class
    logits stay close, and an unknown engine or precision is one line."""
    cfg, model, folder = exported
    images = _images((64, 96))[0]
    with torch.no_grad():
        expected = model.network(images)
    got = load_runtime(str(folder / "model.onnx"), engine="openvino-bf16")(images)
    assert got["pred_masks"].shape == expected["pred_masks"].shape
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"], rtol=0, atol=0.25)
    with pytest.raises(ExportError, match="ONNX engine 'tensorrt': choose from"):
        load_runtime(str(folder / "model.onnx"), engine="tensorrt")
    with pytest.raises(ExportError, match="precision 'fp8'"):
        OpenVinoNetwork(str(folder / "model.onnx"), precision="fp8")


def test_unusable_files_are_one_line_errors(exported, tmp_path):
    cfg, model, folder = exported
    with pytest.raises(ExportError, match="no such ONNX file"):
        load_runtime(str(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ExportError, match="not a readable ONNX model") as e:
        load_runtime(str(corrupt))
    assert "\n" not in str(e.value)
    with pytest.raises(ExportError, match="ends in .onnx"):
        load_runtime(str(tmp_path / "model.bin"))
    torch.manual_seed(0)
    other = build_model(tiny_cfg(num_classes=5)).eval()
    with pytest.raises(ExportError, match="exported with num_classes 7, but the config gives 5"):
        attach_runtime(other, str(folder / "model.onnx"))


def test_a_model_without_mask_classification_cannot_be_exported(tmp_path):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/ade20k-150/per_pixel_baseline_R50_bs16_160k.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18,
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    model = build_model(cfg).eval()
    with pytest.raises(ExportError, match="only MaskFormer models"):
        export_onnx(model, str(tmp_path / "model.onnx"))


@pytest.mark.slow
def test_export_command_writes_the_model_and_its_config(tmp_path):
    cfg, _ = _tiny()
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "tools/deploy/export_model.py"), "--config-file",
                           str(config), "--format", "onnx", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.onnx").is_file() and (out / "config.yaml").is_file()
    assert "output pred_logits: float32 (B, 8, 8)" in proc.stdout
    meta = load_runtime(str(out / "model.onnx")).metadata
    assert meta["num_classes"] == 7 and meta["size_divisibility"] == 32
    bad = subprocess.run([sys.executable, str(REPO / "tools/deploy/export_model.py"), "--config-file",
                          str(tmp_path / "nope.yaml"), "--output", str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
