"""Same weights + same input -> the official implementation's outputs and losses.

The cases in ``$MASKFORMER_D2_REFERENCE/cases`` were produced by facebookresearch/MaskFormer
(see its README for what each file holds and the tolerances used here).
"""
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

import maskformer_d2  # noqa: F401  (registers the model)
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from maskformer_d2 import add_maskformer_config

CASES = ["semantic_r18_small", "panoptic_swin_tiny_small"]


def load_case(case_dir: Path):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(case_dir / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    state = torch.load(case_dir / "weights.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    inputs = dict(np.load(case_dir / "input.npz"))
    expected = dict(np.load(case_dir / "outputs.npz"))
    with open(case_dir / "expected.json") as f:
        expected_json = json.load(f)
    return cfg, model, inputs, expected, expected_json


@pytest.fixture(scope="module", params=CASES)
def case(request, reference_dir):
    case_dir = reference_dir / "cases" / request.param
    if not case_dir.exists():
        pytest.skip(f"reference case {case_dir} not found")
    torch.manual_seed(0)
    return (request.param,) + load_case(case_dir)


def _image_input(inputs: Dict[str, np.ndarray]) -> Dict:
    image = torch.from_numpy(inputs["image"])
    return {"image": image, "height": image.shape[1], "width": image.shape[2]}


def test_head_outputs_match(case):
    """Final and auxiliary pred_logits / pred_masks equal the official ones (≤ 1e-4)."""
    name, cfg, model, inputs, expected, _ = case
    model.eval()
    model.sem_seg_head.predictor.aux_outputs_in_eval = True  # the official head returns them
    with torch.no_grad():
        images = model.preprocess_image([_image_input(inputs)])
        outputs = model.sem_seg_head(model.backbone(images.tensor))
    torch.testing.assert_close(outputs["pred_logits"][0], torch.from_numpy(expected["pred_logits"]), rtol=0, atol=1e-4)
    torch.testing.assert_close(outputs["pred_masks"][0], torch.from_numpy(expected["pred_masks"]), rtol=0, atol=1e-4)
    aux_keys = sorted({k.split("_")[0] for k in expected if k.startswith("aux")})
    assert len(outputs["aux_outputs"]) == len(aux_keys) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
    for i, aux in enumerate(outputs["aux_outputs"]):
        for field in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(
                aux[field][0], torch.from_numpy(expected[f"aux{i}_{field}"]), rtol=0, atol=1e-4
            )


def test_inference_outputs_match(case):
    """sem_seg (≤ 1e-5) and, for the panoptic case, panoptic ids and segments_info are equal."""
    name, cfg, model, inputs, expected, expected_json = case
    model.eval()
    with torch.no_grad():
        (result,) = model([_image_input(inputs)])
    assert result["sem_seg"].shape == expected["sem_seg"].shape
    torch.testing.assert_close(result["sem_seg"], torch.from_numpy(expected["sem_seg"]), rtol=0, atol=1e-5)
    if "panoptic_seg" not in expected:
        assert "panoptic_seg" not in result
        return
    seg, segments_info = result["panoptic_seg"]
    ours = seg.numpy()
    theirs = expected["panoptic_seg"]
    # ids may be renumbered only one-to-one, with equal categories
    pairs = set(zip(ours.ravel().tolist(), theirs.ravel().tolist()))
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs}), "ids not one-to-one"
    ours_cat = {s["id"]: (s["category_id"], s["isthing"]) for s in segments_info}
    theirs_cat = {s["id"]: (s["category_id"], s["isthing"]) for s in expected_json["segments_info"]}
    assert len(ours_cat) == len(theirs_cat)
    for a, b in pairs:
        assert (a == 0) == (b == 0)
        if a:
            assert ours_cat[a] == theirs_cat[b]


def test_training_losses_match(case):
    """Every training loss (final + auxiliary, weighted) within 1e-4 relative."""
    name, cfg, model, inputs, _, expected_json = case
    model.train()
    x = _image_input(inputs)
    inst = Instances(tuple(x["image"].shape[-2:]))
    inst.gt_classes = torch.from_numpy(inputs["gt_labels"])
    inst.gt_masks = torch.from_numpy(inputs["gt_masks"])
    x["instances"] = inst
    losses = model([x])
    expected = expected_json["losses"]
    assert set(losses) == set(expected)
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-4), k
    total = sum(losses.values())
    total.backward()  # the loss is differentiable end to end
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[-5:])
