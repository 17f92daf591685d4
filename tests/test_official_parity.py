"""Same weights + same input -> the official implementation's outputs and losses.

The cases in ``$MASKFORMER_D2_REFERENCE/cases`` were produced by facebookresearch/MaskFormer,
those in ``mask2former/cases`` by facebookresearch/Mask2Former (see the README there for what
each file holds and the tolerances used here).
"""
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances

import maskformer_d2  # noqa: F401  (registers the model)
from maskformer_d2 import add_maskformer_config

CASES = [
    "cases/semantic_r18_small",
    "cases/panoptic_swin_tiny_small",
    "mask2former/cases/m2f_semantic_swin_small",
    "mask2former/cases/m2f_panoptic_swin_small",
    "mask2former/cases/m2f_instance_swin_small",
]


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
    case_dir = reference_dir / request.param
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
    """sem_seg (≤ 1e-5), panoptic ids and segments_info, instances: whatever the case has."""
    name, cfg, model, inputs, expected, expected_json = case
    model.eval()
    with torch.no_grad():
        (result,) = model([_image_input(inputs)])
    assert ("sem_seg" in result) == ("sem_seg" in expected)
    if "sem_seg" in expected:
        assert result["sem_seg"].shape == expected["sem_seg"].shape
        torch.testing.assert_close(result["sem_seg"], torch.from_numpy(expected["sem_seg"]),
                                   rtol=0, atol=1e-5)
    assert ("instances" in result) == ("instances_scores" in expected)
    if "instances" in result:
        _assert_instances_match(result["instances"], expected)
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


def _assert_instances_match(instances: Instances, expected: Dict[str, np.ndarray]) -> None:
    """Same masks, scores (≤ 1e-5) and classes. The official order is that of an unsorted top-k,
    ours is by decreasing score (stable), so the official instances are compared in that order."""
    scores = torch.from_numpy(expected["instances_scores"])
    order = scores.argsort(descending=True, stable=True)
    assert len(instances) == len(scores) > 0
    torch.testing.assert_close(instances.scores, scores[order], rtol=0, atol=1e-5)
    assert instances.pred_classes.tolist() == expected["instances_pred_classes"][order.numpy()].tolist()
    assert torch.equal(instances.pred_masks, torch.from_numpy(expected["instances_pred_masks"])[order])


def test_training_losses_match(case):
    """Every training loss (final + auxiliary, weighted) within 1e-4 relative; point-sampled
    losses (Mask2Former) after seeding torch's generator as the official run did."""
    name, cfg, model, inputs, _, expected_json = case
    model.train()
    if "loss_seed" in expected_json:
        torch.manual_seed(expected_json["loss_seed"])
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
