"""EoMT against the official code (tue-mps/eomt) and against transformers' EoMT.

The reference cases in tests/data/eomt_reference/ (timm's DINOv2 ViT) and
tests/data/eomt_dinov3_reference/ (transformers' DINOv3 ViT with rotary position embeddings) were
written by scripts/make_eomt_reference.py from the official models/ and training/ code on a small
random model (config.json says which); every test below runs on both. Tolerances are those of
two correct fp32 CPU implementations:

* the official checkpoint (Lightning names ``network.*``) loads through our checkpointer with no
  missing or unexpected key, and a misfit names the config key;
* training at a fixed annealing state (block masks kept with probability 1 and 0.5) and seed:
  the class and mask logits of every block <= 1e-4, each loss within 1e-4 relative;
* evaluation of the trained state (no masks): final logits <= 1e-4, panoptic segments, instances
  equal, sliding-window semantic scores <= 1e-5;
* DINOv3 only: a checkpoint of deltas to the DINOv3 weights (``MODEL.EOMT.DELTA_WEIGHTS``, the
  official ``delta_weights``) loads to the official sums;
* transformers' ``EomtForUniversalSegmentation`` with random weights, converted
  (maskformer_d2.convert.hf_eomt): the same logits <= 1e-4, with and without masked attention.
"""
import dataclasses
import json
import re
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

import maskformer_d2  # noqa: F401  (registers EoMT)
from maskformer_d2.checkpoint import CheckpointMismatchError, MaskFormerCheckpointer
from maskformer_d2.config import add_maskformer_config
from maskformer_d2.modeling.eomt import EoMT
from maskformer_d2.modeling.eomt.official_keys import rename_to_official_eomt_keys

DATA = Path(__file__).parent / "data"
# official loss names -> ours (blocks counted from the first query block)
LOSS_NAMES = {"mask": "loss_mask", "dice": "loss_dice", "cross_entropy": "loss_ce"}


@lru_cache(maxsize=None)
def reference(name: str) -> types.SimpleNamespace:
    """The case ``tests/data/<name>``: its small config, expected values and arrays."""
    path = DATA / name
    small = json.loads((path / "config.json").read_text())
    return types.SimpleNamespace(
        path=path, small=small, expected=json.loads((path / "expected.json").read_text()),
        cases=dict(np.load(path / "cases.npz")),
        things=frozenset(c for c in range(small["num_classes"]) if c not in small["stuff_classes"]))


@pytest.fixture(params=["eomt_reference", "eomt_dinov3_reference"], ids=["dinov2", "dinov3"])
def ref(request):
    return reference(request.param)


def small_cfg(ref, *opts):
    SMALL = ref.small
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "EoMT", "MODEL.BACKBONE.NAME", "EoMTViT", "MODEL.DEVICE", "cpu",
        "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53], "MODEL.PIXEL_STD", [58.395, 57.12, 57.375],
        "INPUT.FORMAT", "RGB",
        "MODEL.EOMT.BACKBONE_NAME", SMALL["backbone_name"], "MODEL.EOMT.PATCH_SIZE", SMALL["patch_size"],
        "MODEL.EOMT.IMG_SIZE", SMALL["img_size"], "MODEL.EOMT.EMBED_DIM", SMALL["embed_dim"],
        "MODEL.EOMT.DEPTH", SMALL["depth"], "MODEL.EOMT.NUM_HEADS", SMALL["num_heads"],
        "MODEL.EOMT.NUM_BLOCKS", SMALL["num_blocks"],
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", SMALL["num_q"],
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", SMALL["num_classes"],
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", SMALL["num_points"],
        "MODEL.MASK_FORMER.CLASS_WEIGHT", 2.0, "MODEL.MASK_FORMER.MASK_WEIGHT", 5.0,
        "MODEL.MASK_FORMER.DICE_WEIGHT", 5.0,
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", SMALL["mask_thresh"],
        "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", SMALL["overlap_thresh"],
        "TEST.DETECTIONS_PER_IMAGE", SMALL["eval_top_k_instances"], "DATASETS.TRAIN", "()",
        *opts,
    ])
    return cfg


def build(ref, *tasks, opts=()):
    """The small EoMT with the output ``tasks`` (thing classes given, no dataset needed)."""
    flags = {"semantic": "SEMANTIC_ON", "instance": "INSTANCE_ON", "panoptic": "PANOPTIC_ON"}
    cfg = small_cfg(ref, *[x for t, f in flags.items() for x in (f"MODEL.MASK_FORMER.TEST.{f}", t in tasks)],
                    *opts)
    kwargs = EoMT.from_config(cfg)
    kwargs["inference_options"] = dataclasses.replace(kwargs["inference_options"], thing_ids=ref.things)
    return EoMT(**kwargs)


def official_state(ref, name="weights.pth"):
    """An official state dict of the case (float16 values on disk) in float32."""
    state = torch.load(ref.path / name, weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_official(ref, model, tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save(official_state(ref), path)
    MaskFormerCheckpointer(model).load(str(path))
    return model


@pytest.fixture
def loaded(ref, tmp_path):
    return lambda *tasks, opts=(): load_official(ref, build(ref, *tasks, opts=opts), tmp_path).eval()


def resized(image: np.ndarray, short: int, long: int) -> torch.Tensor:
    """(3, H, W) uint8 through the test mapper's resize (PIL bilinear), as float."""
    hwc = image.transpose(1, 2, 0)
    out = T.ResizeShortestEdge(short, long).get_transform(hwc).apply_image(hwc)
    return torch.from_numpy(out.transpose(2, 0, 1).astype(np.float32))


def max_diff(a, b) -> float:
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()


# ----------------------------------------------------------------------------- checkpoint
def test_official_checkpoint_loads_with_every_key_and_value(ref, tmp_path):
    model = build(ref, "semantic")
    ours = set(model.state_dict())
    load_official(ref, model, tmp_path)
    state = model.state_dict()
    official = official_state(ref)
    assert state["backbone.vit.blocks.3.norm1.weight"].equal(
        official["network.encoder.backbone.blocks.3.norm1.weight"])
    assert state["sem_seg_head.mask_embed.4.bias"].equal(official["network.mask_head.4.bias"])
    assert state["mask_annealing.probs"].equal(torch.zeros(ref.small["num_blocks"]))  # trained state
    renamed = set(model.rename_checkpoint_keys(official))
    assert renamed == ours, (sorted(renamed - ours), sorted(ours - renamed))
    # and back (the benchmark runs the official code on our weights): every entry of the official
    # network but its pixel statistics, with our values
    back = rename_to_official_eomt_keys(state)
    assert set(back) == {k for k in official if k.startswith("network.") and ".pixel_" not in k}
    assert back["network.mask_head.4.bias"] is state["sem_seg_head.mask_embed.4.bias"]


def test_official_checkpoint_for_other_classes_names_the_config_key(ref, tmp_path):
    model = build(ref, "semantic", opts=("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9))
    with pytest.raises(CheckpointMismatchError, match="NUM_CLASSES"):
        load_official(ref, model, tmp_path)


# ----------------------------------------------------------------------------- training
def train_inputs(ref):
    inputs = []
    for b, image in enumerate(ref.cases["train_images"]):
        masks = torch.from_numpy(ref.cases[f"train_masks_{b}"])
        inst = Instances(tuple(masks.shape[-2:]), gt_classes=torch.from_numpy(ref.cases[f"train_labels_{b}"]),
                         gt_masks=BitMasks(masks))
        inputs.append({"image": torch.from_numpy(image).float(), "instances": inst})
    return inputs


def test_training_logits_and_losses_of_every_block_equal_the_official(ref, loaded):
    model = loaded("semantic").train()
    model.mask_annealing.probs.copy_(torch.tensor(ref.small["train_attn_mask_probs"]))
    inputs = train_inputs(ref)
    torch.manual_seed(ref.small["loss_seed"])
    images = model.preprocess_image(inputs)
    outputs = model.network(images.tensor)
    predictions = outputs["aux_outputs"] + [outputs]
    assert len(predictions) == ref.small["num_blocks"] + 1
    for i, p in enumerate(predictions):
        assert max_diff(p["pred_logits"].detach(), ref.cases[f"train_pred_logits_{i}"]) <= 1e-4, i
        assert max_diff(p["pred_masks"].detach(), ref.cases[f"train_pred_masks_{i}"]) <= 1e-4, i
    losses = model.losses(outputs, model.prepare_targets(inputs, images))
    official = {}
    for key, value in ref.expected["train_losses"].items():
        m = re.fullmatch(r"loss_(mask|dice|cross_entropy)(?:_block_(-\d+))?", key)
        if m:
            suffix = f"_{ref.small['num_blocks'] + int(m[2])}" if m[2] else ""
            official[LOSS_NAMES[m[1]] + suffix] = value
    assert set(losses) == set(official)
    for key, value in official.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4), key
    weighted = model.criterion.weighted(losses)
    assert sum(weighted.values()).item() == pytest.approx(ref.expected["train_loss_total"], rel=1e-4)


def test_a_training_step_through_forward_gives_the_same_weighted_losses(ref, loaded):
    model = loaded("semantic").train()
    model.mask_annealing.probs.copy_(torch.tensor(ref.small["train_attn_mask_probs"]))
    torch.manual_seed(ref.small["loss_seed"])
    losses = model(train_inputs(ref))
    assert sum(losses.values()).item() == pytest.approx(ref.expected["train_loss_total"], rel=1e-4)
    sum(losses.values()).backward()  # every parameter of the model takes part
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- evaluation
def panoptic_input(ref):
    h, w = ref.small["img_size"]
    image = ref.cases["panoptic_image"]
    return {"image": resized(image, h, w), "height": image.shape[1], "width": image.shape[2]}


def test_eval_logits_of_the_trained_state_equal_the_official(ref, loaded):
    model = loaded("semantic")
    with torch.no_grad():
        outputs = model.network(model.preprocess_image([panoptic_input(ref)]).tensor)
    assert "aux_outputs" not in outputs  # every mask probability is 0: no intermediate prediction
    assert max_diff(outputs["pred_logits"], ref.cases["eval_pred_logits"]) <= 1e-4
    assert max_diff(outputs["pred_masks"], ref.cases["eval_pred_masks"]) <= 1e-4


def test_panoptic_output_equals_the_official(ref, loaded):
    with torch.no_grad():
        seg, info = loaded("panoptic")([panoptic_input(ref)])[0]["panoptic_seg"]
    classes = torch.from_numpy(ref.cases["panoptic_classes"])
    segments = torch.from_numpy(ref.cases["panoptic_segments"])
    assert len(info) == len(segments.unique()) - 1 >= 2
    for s in info:  # ids renumbered one-to-one (official: 0.., void -1), categories equal
        official_ids = segments[seg == s["id"]].unique()
        assert len(official_ids) == 1 and official_ids.item() >= 0
        assert (classes[seg == s["id"]] == s["category_id"]).all()
        assert s["isthing"] == (s["category_id"] in ref.things)
        assert ((segments == official_ids.item()) == (seg == s["id"])).all()
    assert ((seg == 0) == (segments == -1)).all()


def test_instance_output_equals_the_official(ref, loaded):
    with torch.no_grad():
        inst = loaded("instance")([panoptic_input(ref)])[0]["instances"]
    assert len(inst) == ref.small["eval_top_k_instances"]
    h, w = ref.cases["panoptic_image"].shape[1:]
    masks = np.unpackbits(ref.cases["instance_masks"], axis=-1)[..., :w].astype(bool)
    assert max_diff(inst.scores, ref.cases["instance_scores"]) <= 1e-5
    assert inst.pred_classes.tolist() == ref.cases["instance_labels"].tolist()
    assert (inst.pred_masks.numpy() == masks).all()


def test_sliding_window_semantic_output_equals_the_official(ref, loaded):
    h, _ = ref.small["img_size"]
    image = ref.cases["semantic_image"]
    model = loaded("semantic", opts=("MODEL.EOMT.TEST.SLIDING_WINDOW", True))
    x = {"image": resized(image, h, 10 * h), "height": image.shape[1], "width": image.shape[2]}
    assert x["image"].shape[-1] > h  # two overlapping windows
    with torch.no_grad():
        sem_seg = model([x])[0]["sem_seg"]
    assert sem_seg.shape == ref.cases["sem_seg"].shape
    assert max_diff(sem_seg, ref.cases["sem_seg"]) <= 1e-5


# ----------------------------------------------------------------------------- DINOv3 delta weights
def delta_model(*opts):
    ref = reference("eomt_dinov3_reference")
    return ref, build(ref, "semantic", opts=("MODEL.EOMT.DELTA_WEIGHTS", True, *opts))


def test_dinov3_delta_weights_load_to_the_official_sums():
    ref, model = delta_model("MODEL.EOMT.BACKBONE_WEIGHTS", str(DATA / "eomt_dinov3_reference" / "dinov3_base.pth"))
    MaskFormerCheckpointer(model).load(str(ref.path / "delta_weights.pth"))
    state = rename_to_official_eomt_keys(model.state_dict())
    expected = ref.expected["delta_checksums"]
    assert set(state) == {k for k in expected if ".pixel_" not in k}
    for key, value in state.items():
        total, *first = expected[key]
        assert value.double().sum().item() == pytest.approx(total, rel=1e-6, abs=1e-5), key
        assert value.flatten()[:4].double().tolist() == pytest.approx(first, abs=1e-6), key
    # the same file read as absolute weights is another model: the ViT lacks its DINOv3 part
    _, absolute = delta_model("MODEL.EOMT.DELTA_WEIGHTS", False)
    MaskFormerCheckpointer(absolute).load(str(ref.path / "delta_weights.pth"))
    key = "network.encoder.backbone.blocks.0.attention.q_proj.weight"
    assert rename_to_official_eomt_keys(absolute.state_dict())[key].double().sum().item() != pytest.approx(
        expected[key][0], rel=1e-3)


def test_dinov3_delta_weights_without_the_dinov3_file_name_the_config_key(tmp_path):
    ref, model = delta_model()
    with pytest.raises(CheckpointMismatchError, match="MODEL.EOMT.BACKBONE_WEIGHTS"):
        MaskFormerCheckpointer(model).load(str(ref.path / "delta_weights.pth"))
    wrong = tmp_path / "dinov3_other_size.pth"  # a DINOv3 file of another width
    torch.save({k: torch.zeros(*v.shape[:-1], 2 * v.shape[-1]) if v.dim() else v
                for k, v in torch.load(ref.path / "dinov3_base.pth", weights_only=True).items()}, wrong)
    ref, model = delta_model("MODEL.EOMT.BACKBONE_WEIGHTS", str(wrong))
    with pytest.raises(CheckpointMismatchError, match=r"dinov3_other_size.pth: not the DINOv3 ViT .*shapes differ"):
        MaskFormerCheckpointer(model).load(str(ref.path / "delta_weights.pth"))


# ----------------------------------------------------------------------------- transformers
@pytest.mark.parametrize("probs", [1.0, 0.0])
def test_transformers_eomt_converted_gives_the_same_logits(probs):
    transformers = pytest.importorskip("transformers")
    from maskformer_d2.convert.hf_eomt import config_overrides, convert_state_dict

    hf_config = transformers.EomtConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, patch_size=16,
        num_blocks=2, num_queries=12, num_labels=5, layerscale_value=0.5)
    torch.manual_seed(0)
    hf = transformers.EomtForUniversalSegmentation(hf_config).eval()
    with torch.no_grad():
        hf.attn_mask_probs.fill_(probs)
        for p in hf.parameters():  # beyond the init, so that every part matters
            p.add_(torch.randn_like(p) * 0.1)
    cfg = get_cfg()
    add_maskformer_config(cfg)
    for key, value in config_overrides(hf_config).items():
        cfg.merge_from_list([key, value])
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", False,
                         "MODEL.MASK_FORMER.TEST.INSTANCE_ON", False, "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", True])
    model = EoMT(cfg).eval()
    model.load_state_dict(convert_state_dict(hf.state_dict()), strict=True)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.network(pixels)
        theirs = hf(pixel_values=pixels)
    assert ("aux_outputs" in ours) == (probs > 0)
    assert max_diff(ours["pred_logits"], theirs.class_queries_logits) <= 1e-4
    assert max_diff(ours["pred_masks"], theirs.masks_queries_logits) <= 1e-4


def test_the_hf_converter_tool_writes_weights_and_a_config_the_predictor_runs(tmp_path):
    transformers = pytest.importorskip("transformers")
    import importlib.util

    from maskformer_d2.engine.predictor import MaskFormerPredictor

    hf_config = transformers.EomtConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                        image_size=64, patch_size=16, num_blocks=1, num_queries=8, num_labels=4)
    torch.manual_seed(0)
    hf = transformers.EomtForUniversalSegmentation(hf_config).eval()
    with torch.no_grad():
        hf.attn_mask_probs.zero_()
    hf.save_pretrained(tmp_path / "hf")
    script = Path(__file__).parents[1] / "tools" / "convert-hf-eomt-to-d2.py"
    spec = importlib.util.spec_from_file_location("tool", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    predictor = MaskFormerPredictor(cfg, input_format="RGB")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    sem_seg = predictor(image)["sem_seg"]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        out = hf(pixel_values=pixels[None])
    probs = out.class_queries_logits[0].softmax(-1)[:, :-1]
    expected = torch.einsum("qc,qhw->chw", probs, torch.nn.functional.interpolate(
        out.masks_queries_logits, size=(64, 64), mode="bilinear")[0].sigmoid())
    assert max_diff(sem_seg, expected) <= 1e-4
