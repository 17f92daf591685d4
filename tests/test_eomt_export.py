"""EoMT exported to ONNX and run by ONNX Runtime / OpenVINO: the logits and the task outputs of
PyTorch, in the trained state (no attention masks) and with masked attention still on; and the
demo renders the same picture from the exported file as from the weights.

The models are the small official EoMTs of tests/data/eomt_reference (timm's DINOv2 ViT) and
tests/data/eomt_dinov3_reference (transformers' DINOv3 ViT, rotary positions), official weights.
EoMT pads every input to ``MODEL.EOMT.IMG_SIZE``, so the export has that fixed input size.
"""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_eomt_parity import build, load_official, reference
from test_export import assert_same_task_outputs

from maskformer_d2.deploy import attach_runtime, export_onnx, load_runtime
from maskformer_d2.errors import ExportError

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
TASKS = ("semantic", "instance", "panoptic")
REF = reference("eomt_reference")
SMALL = REF.small
SIZE = tuple(SMALL["img_size"])


def _model(ref, tmp_path, probs: float, opts=()):
    model = load_official(ref, build(ref, *TASKS, opts=opts), tmp_path).eval()
    model.mask_annealing.probs.fill_(probs)
    return model


@pytest.fixture(scope="module", params=[("eomt_reference", 0.0), ("eomt_reference", 1.0),
                                        ("eomt_dinov3_reference", 0.0), ("eomt_dinov3_reference", 1.0)],
                ids=["dinov2-trained", "dinov2-masked_attention", "dinov3-trained", "dinov3-masked_attention"])
def exported(request, tmp_path_factory):
    """(case, model, path of its export) with the annealing probabilities of ``param``."""
    name, probs = request.param
    folder = tmp_path_factory.mktemp("eomt_export")
    model = _model(reference(name), folder, probs)
    export_onnx(model, str(folder / "model.onnx"))
    return reference(name), model, folder / "model.onnx"


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_exported_eomt_gives_the_pytorch_logits(exported, engine):
    _, model, path = exported
    runtime = load_runtime(str(path), engine=engine)
    assert runtime.metadata["fixed_size"] == list(SIZE)
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.network(images)
    got = runtime(images)
    for key in ("pred_logits", "pred_masks"):
        assert got[key].shape == expected[key].shape
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)
    assert expected["pred_masks"].shape[-2:] == (SIZE[0] // 4, SIZE[1] // 4)
    with pytest.raises(ExportError, match=f"exported for {SIZE[0]}x{SIZE[1]} inputs only"):
        runtime(torch.zeros(1, 3, SIZE[0] * 2, SIZE[1]))


def test_task_outputs_of_exported_eomt_equal_pytorch(exported, tmp_path):
    ref, model, path = exported
    deployed = attach_runtime(_model(ref, tmp_path, float(model.mask_annealing.probs[0])), str(path))
    g = torch.Generator().manual_seed(4)
    # smaller than the export size (padded by the model) and resized back to 80 x 96
    inputs = [{"image": torch.rand(3, 48, 64, generator=g) * 255, "height": 80, "width": 96}]
    with torch.no_grad():
        (expected,) = model(inputs)
        (got,) = deployed(inputs)
    assert got["sem_seg"].shape == (SMALL["num_classes"], 80, 96)
    assert_same_task_outputs(got, expected)


def test_sliding_window_semantic_runs_the_exported_windows(tmp_path):
    opts = ("MODEL.EOMT.TEST.SLIDING_WINDOW", True)
    model = load_official(REF, build(REF, "semantic", opts=opts), tmp_path).eval()
    export_onnx(model, str(tmp_path / "model.onnx"))
    deployed = attach_runtime(load_official(REF, build(REF, "semantic", opts=opts), tmp_path),
                              str(tmp_path / "model.onnx"))
    # short side = the window; the long side needs three overlapping windows
    inputs = [{"image": torch.rand(3, SIZE[0], SIZE[1] * 2 + 8, generator=torch.Generator().manual_seed(5)) * 255}]
    with torch.no_grad():
        (expected,) = model(inputs)
        (got,) = deployed(inputs)
    assert got["sem_seg"].shape == (SMALL["num_classes"], SIZE[0], SIZE[1] * 2 + 8)
    torch.testing.assert_close(got["sem_seg"], expected["sem_seg"], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_demo_renders_the_same_picture_from_the_export(tmp_path):
    """train-free: the shapes EoMT config with seeded random weights, saved, exported by
    tools/deploy/export_model.py, and rendered by demo/demo.py from both."""
    from detectron2.modeling import build_model

    from maskformer_d2.config import load_config
    config = str(REPO / "configs" / "shapes" / "eomt_ViT-S_shapes.yaml")
    torch.manual_seed(0)
    model = build_model(load_config(config, ["MODEL.DEVICE", "cpu"]))
    model.mask_annealing.probs.zero_()  # the trained state
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    image = np.zeros((100, 120, 3), np.uint8)
    cv2.circle(image, (40, 50), 25, (0, 200, 255), -1)
    cv2.rectangle(image, (70, 20), (110, 80), (255, 80, 0), -1)
    cv2.imwrite(str(tmp_path / "shapes.png"), image)

    def run(*args):
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]

    opts = ["MODEL.WEIGHTS", str(weights)]
    run("tools/deploy/export_model.py", "--config-file", config, "--output", str(tmp_path / "exp"), "--opts", *opts)
    pictures = {}
    for name, extra in (("torch", []), ("onnx", ["--onnx", str(tmp_path / "exp" / "model.onnx")])):
        out = tmp_path / f"{name}.png"
        run("demo/demo.py", "--config-file", config, "--input", str(tmp_path / "shapes.png"), "--output",
            str(out), "--task", "semantic", *extra, "--opts", *opts)
        pictures[name] = cv2.imread(str(out))
    assert pictures["torch"].shape[:2] == (100, 120)
    assert (pictures["torch"] != image).any(-1).mean() > 0.5  # every pixel gets a class colour
    differing = (pictures["torch"] != pictures["onnx"]).any(-1).mean()
    assert differing < 1e-3, differing
