"""EoMT's parts on hand-made inputs, and its training recipe against the official one.

* the annealing schedule (1 before its start, 0 from its end, polynomial between), its state in
  the checkpoint, and a resumed run continuing it from the trainer's iteration;
* the attention mask of a query block (which tokens a query sees, the random reset of masks);
* the sliding windows of the semantic inference;
* the optimiser: every parameter's LR (layer-wise decay), weight decay and the two-stage warm-up
  + poly schedule equal the official ``configure_optimizers`` (tests/data/eomt_reference);
* export: the exported network computes the same logits;
* fine-tuning from DINOv2: tools/convert-dinov2-to-d2.py gives the ViT the weights timm's
  pretrained loading gives the official code (patch and position embeddings resampled).
"""
import math
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch
from detectron2.utils.events import EventStorage
from test_eomt_parity import build as build_case
from test_eomt_parity import reference
from test_eomt_parity import small_cfg as small_case_cfg

from maskformer_d2.engine.solver import build_lr_scheduler, build_optimizer
from maskformer_d2.modeling.eomt import MaskAnnealing, annealed_probability
from maskformer_d2.modeling.eomt.mask_annealing import query_attention_mask
from maskformer_d2.modeling.eomt.official_keys import rename_official_eomt_keys
from maskformer_d2.modeling.eomt.sliding_window import merge_window_scores, window_spans

REF = Path(__file__).parent / "data" / "eomt_reference"
SMALL = reference("eomt_reference").small


def build(*tasks, opts=(), case="eomt_reference"):
    return build_case(reference(case), *tasks, opts=opts)


def small_cfg(*opts, case="eomt_reference"):
    return small_case_cfg(reference(case), *opts)


# ----------------------------------------------------------------------------- annealing
def test_annealed_probability_is_polynomial_between_start_and_end():
    assert annealed_probability(99, 100, 200, 0.9) == 1.0
    assert annealed_probability(100, 100, 200, 0.9) == 1.0
    assert annealed_probability(150, 100, 200, 0.9) == pytest.approx(0.5 ** 0.9)
    assert annealed_probability(175, 100, 200, 2.0) == pytest.approx(0.0625)
    assert annealed_probability(200, 100, 200, 0.9) == 0.0


def test_annealing_steps_every_block_on_its_own_schedule():
    annealing = MaskAnnealing(3, [0, 10, 20], [10, 20, 30], power=1.0)
    annealing.step(15)
    assert annealing.probs.tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="NUM_BLOCKS"):
        MaskAnnealing(2, [0, 10, 20], [10, 20, 30])


def test_training_anneals_from_the_trainer_iteration_and_a_resumed_model_continues():
    opts = ("MODEL.EOMT.ATTN_MASK_ANNEALING_START_STEPS", [2, 4], "MODEL.EOMT.ATTN_MASK_ANNEALING_END_STEPS", [6, 8],
            "MODEL.EOMT.ATTN_MASK_ANNEALING_POWER", 1.0)
    model = build("semantic", opts=opts).train()
    image = {"image": torch.zeros(3, 64, 64), "instances": _one_instance()}
    with EventStorage(start_iter=5) as storage:
        model([image])
        assert storage.history("attn_mask_prob_0").latest() == pytest.approx(0.25)
    assert model.mask_annealing.probs.tolist() == pytest.approx([0.25, 0.75])
    resumed = build("semantic", opts=opts)
    resumed.load_state_dict(model.state_dict())  # the probabilities are part of the checkpoint
    assert resumed.mask_annealing.probs.tolist() == pytest.approx([0.25, 0.75])
    with EventStorage(start_iter=7):
        resumed.train()([image])
    assert resumed.mask_annealing.probs.tolist() == pytest.approx([0.0, 0.25])


def _one_instance():
    from detectron2.structures import BitMasks, Instances

    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 5:50] = True
    return Instances((64, 64), gt_classes=torch.tensor([2]), gt_masks=BitMasks(masks))


def test_official_annealing_state_is_our_buffer():
    renamed = rename_official_eomt_keys({"network.attn_mask_probs": torch.zeros(4),
                                         "network.encoder.pixel_mean": torch.zeros(1, 3, 1, 1)})
    assert list(renamed) == ["mask_annealing.probs"]


# ----------------------------------------------------------------------------- attention mask
def test_query_rows_see_the_patches_of_their_mask_and_everything_else_is_visible():
    # 2 queries, 1 prefix token, 2x2 patches; mask logits already at patch resolution
    logits = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])
    mask = query_attention_mask(logits, num_tokens=7, num_prefix=1, grid_size=(2, 2), prob=torch.tensor(1.0))
    assert mask[0, 0].tolist() == [True, True, True, True, False, False, True]
    assert mask[0, 1].tolist() == [True, True, True, False, False, False, False]
    assert mask[0, 2:].all()  # prefix and patch tokens attend everywhere
    state = torch.get_rng_state()
    never = query_attention_mask(logits, 7, 1, (2, 2), prob=torch.tensor(0.0))
    assert never.all()  # probability 0: every mask dropped (one draw of (B, Q))
    torch.set_rng_state(state)
    torch.rand(1, 2)
    assert not torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- sliding windows
def test_windows_cover_the_long_side_with_even_overlap():
    assert window_spans(64, 115, 64) == [(0, 64, 0, 64), (0, 64, 51, 115)]
    assert window_spans(200, 64, 64) == [(0, 64, 0, 64), (45, 109, 0, 64), (90, 154, 0, 64), (136, 200, 0, 64)]
    assert window_spans(64, 64, 64) == [(0, 64, 0, 64)]


def test_overlapping_window_scores_are_averaged():
    spans = window_spans(2, 3, 2)  # [(0, 2, 0, 2), (0, 2, 1, 3)]
    merged = merge_window_scores([torch.ones(1, 2, 2), 3 * torch.ones(1, 2, 2)], spans, (2, 3), (2, 3))
    assert merged[0].tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]


# ----------------------------------------------------------------------------- optimiser
def _solver_cfg(case="eomt_reference"):
    s = reference(case).small
    return small_cfg(
        "SOLVER.LLRD_L2_ENABLED", s.get("llrd_l2_enabled", True),
        "SOLVER.BASE_LR", s["lr"], "SOLVER.LLRD", s["llrd"], "SOLVER.WEIGHT_DECAY", s["weight_decay"],
        "SOLVER.WEIGHT_DECAY_NORM", s["weight_decay"], "SOLVER.WEIGHT_DECAY_EMBED", s["weight_decay"],
        "SOLVER.BACKBONE_MULTIPLIER", 1.0, "SOLVER.OPTIMIZER", "ADAMW",
        "SOLVER.LR_SCHEDULER_NAME", "TwoStageWarmupPolyLR", "SOLVER.MAX_ITER", s["total_steps"],
        "SOLVER.WARMUP_ITERS", s["warmup_steps"][0], "SOLVER.BACKBONE_WARMUP_ITERS", s["warmup_steps"][1],
        "SOLVER.POLY_LR_POWER", s["poly_power"], case=case)


@pytest.mark.parametrize("case", ["eomt_reference", "eomt_dinov3_reference"], ids=["dinov2", "dinov3"])
def test_every_parameter_learns_at_the_official_rate_with_the_official_weight_decay(case):
    expected = reference(case).expected
    cfg = _solver_cfg(case)
    model = build("semantic", case=case)
    optimizer = build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    official = rename_official_eomt_keys(expected["param_lrs"])
    assert set(ours) == set(official)
    for name, lr in official.items():
        assert ours[name][0] == pytest.approx(lr, rel=1e-12), name
    assert {wd for _, wd in ours.values()} == set(expected["weight_decays"])
    assert ours["backbone.vit.blocks.0.norm1.weight"][0] == pytest.approx(1e-4 * 0.8 ** 3)
    # the query blocks: decayed unless LLRD_L2_ENABLED is off (the official DINOv3 configs)
    decayed = reference(case).small.get("llrd_l2_enabled", True)
    assert ours["backbone.vit.blocks.2.norm1.weight"][0] == pytest.approx(1e-4 * 0.8 ** decayed)


def test_two_stage_warmup_poly_schedule_equals_the_official():
    import numpy as np

    factors = np.load(REF / "cases.npz")["schedule_vit_head"]
    cfg = _solver_cfg()
    model = build("semantic")
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    vit = next(i for i, g in enumerate(optimizer.param_groups) if g["vit"])
    head = next(i for i, g in enumerate(optimizer.param_groups) if not g["vit"])
    for step in range(SMALL["total_steps"]):
        got = [optimizer.param_groups[i]["lr"] / scheduler.base_lrs[i] for i in (vit, head)]
        assert got == pytest.approx(factors[step].tolist(), abs=1e-12), step
        optimizer.step()
        scheduler.step()
    assert math.isclose(factors[15][0], 0.25)  # the ViT warms up after the head (10 + 20 steps)


# ----------------------------------------------------------------------------- export
def test_exported_network_computes_the_same_logits(tmp_path):
    from maskformer_d2.deploy.export import export_torchscript

    model = build("semantic").eval()
    images = torch.randn(1, 3, *SMALL["img_size"])
    export_torchscript(model, str(tmp_path / "model.ts"), example=images)
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        logits, masks = traced(images)
        expected = model.network(images)
    assert torch.allclose(logits, expected["pred_logits"], atol=1e-5)
    assert torch.allclose(masks, expected["pred_masks"], atol=1e-5)


# ----------------------------------------------------------------------------- inference
def _shapes_predictor():
    from maskformer_d2.config import load_config
    from maskformer_d2.engine.predictor import MaskFormerPredictor

    cfg = load_config(str(REF.parents[2] / "configs" / "shapes" / "eomt_ViT-S_shapes.yaml"), [
        "MODEL.DEVICE", "cpu", "MODEL.EOMT.EMBED_DIM", 32, "MODEL.EOMT.DEPTH", 3, "MODEL.EOMT.NUM_HEADS", 2,
        "MODEL.EOMT.IMG_SIZE", [64, 64], "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64])
    return MaskFormerPredictor(cfg)


def test_the_predictor_gives_all_three_outputs_at_the_image_size():
    predictor = _shapes_predictor()
    out = predictor(torch.randint(0, 255, (100, 80, 3), dtype=torch.uint8).numpy())
    assert out["sem_seg"].shape == (7, 100, 80)
    assert out["panoptic_seg"][0].shape == (100, 80)
    instances = out["instances"]
    assert instances.image_size == (100, 80) and 0 < len(instances) <= 50
    things = predictor.model.inference_options.thing_ids  # with panoptic output: thing classes only
    assert set(instances.pred_classes.tolist()) <= things


def test_an_input_larger_than_the_network_input_is_refused_with_the_fix():
    model = _shapes_predictor().model
    with pytest.raises(ValueError, match="exceeds MODEL.EOMT.IMG_SIZE 64x64.*MIN_SIZE_TEST"):
        model([{"image": torch.zeros(3, 70, 64)}])


# ----------------------------------------------------------------------------- fine-tuning from DINOv2
def _released_dinov2(path: Path) -> Dict[str, torch.Tensor]:
    """A DINOv2-architecture ViT as released (patch 14 at 518 x 518, timm's names), small and random."""
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(3)
    vit = timm.create_model(SMALL["backbone_name"], pretrained=False, num_classes=0, embed_dim=SMALL["embed_dim"],
                            depth=SMALL["depth"], num_heads=SMALL["num_heads"])
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(path))
    return state


@pytest.mark.slow
def test_dinov2_weights_convert_as_timm_loads_them_for_the_official_code(tmp_path):
    import timm

    from maskformer_d2.checkpoint import MaskFormerCheckpointer
    released = _released_dinov2(tmp_path / "model.safetensors")
    assert released["patch_embed.proj.weight"].shape[-1] == 14
    config = tmp_path / "small.yaml"
    config.write_text(small_cfg().dump())
    proc = subprocess.run([sys.executable, str(REF.parents[2] / "tools" / "convert-dinov2-to-d2.py"),
                           str(tmp_path / "model.safetensors"), str(tmp_path / "vit.safetensors"),
                           "--config-file", str(config)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # what the official EoMT gets: timm's pretrained loading of the same file, at patch 16 and 64 x 64
    official = timm.create_model(
        SMALL["backbone_name"], pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "model.safetensors")},
        img_size=tuple(SMALL["img_size"]), patch_size=SMALL["patch_size"], num_classes=0,
        embed_dim=SMALL["embed_dim"], depth=SMALL["depth"], num_heads=SMALL["num_heads"]).state_dict()
    model = build("semantic")
    head_before = model.sem_seg_head.class_embed.weight.clone()
    MaskFormerCheckpointer(model).load(str(tmp_path / "vit.safetensors"))
    ours = model.backbone.vit.state_dict()
    assert set(ours) == set(official)
    for key, value in official.items():
        assert torch.equal(ours[key], value), key
    assert ours["patch_embed.proj.weight"].shape[-1] == SMALL["patch_size"]
    assert ours["blocks.1.attn.qkv.weight"].equal(released["blocks.1.attn.qkv.weight"])  # unchanged
    assert not ours["pos_embed"].shape == released["pos_embed"].shape  # resampled to the 4 x 4 grid
    assert model.sem_seg_head.class_embed.weight.equal(head_before)  # the head stays as built


@pytest.mark.slow
def test_dinov2_converter_refuses_another_architecture_in_one_line(tmp_path):
    _released_dinov2(tmp_path / "model.safetensors")
    config = tmp_path / "wide.yaml"
    config.write_text(small_cfg("MODEL.EOMT.EMBED_DIM", 64).dump())
    proc = subprocess.run([sys.executable, str(REF.parents[2] / "tools" / "convert-dinov2-to-d2.py"),
                           str(tmp_path / "model.safetensors"), str(tmp_path / "vit.safetensors"),
                           "--config-file", str(config)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "BACKBONE_NAME" in proc.stderr and not (tmp_path / "vit.safetensors").exists()


def test_dinov3_weights_convert_to_the_vit_the_official_code_builds_from_them(tmp_path):
    """tools/convert-dinov3-to-d2.py on transformers' DINOv3 file of the small DINOv3 case (the
    encoder weights the official code got from ``from_pretrained``): the ViT gets exactly the
    official encoder; files saved by transformers >= 5 (``model.layer.*``) convert the same."""
    from safetensors.torch import save_file

    from maskformer_d2.checkpoint import MaskFormerCheckpointer

    ref = reference("eomt_dinov3_reference")
    base = torch.load(ref.path / "dinov3_base.pth", weights_only=True)
    official = torch.load(ref.path / "weights.pth", weights_only=True)
    config = tmp_path / "small_dinov3.yaml"
    config.write_text(small_cfg(case="eomt_dinov3_reference").dump())
    v5 = {("model." + k if k.startswith("layer.") else k): v for k, v in base.items()}
    save_file({k: v.contiguous() for k, v in v5.items()}, str(tmp_path / "model.safetensors"))
    for source in (ref.path / "dinov3_base.pth", tmp_path / "model.safetensors"):
        out = tmp_path / f"vit_{source.stem}.safetensors"
        proc = subprocess.run([sys.executable, str(REF.parents[2] / "tools" / "convert-dinov3-to-d2.py"),
                               str(source), str(out), "--config-file", str(config)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        model = build("semantic", case="eomt_dinov3_reference")
        head_before = model.sem_seg_head.class_embed.weight.clone()
        MaskFormerCheckpointer(model).load(str(out))
        ours = model.backbone.vit.state_dict()
        prefix = "network.encoder.backbone."
        assert set(ours) == {k[len(prefix):] for k in official if k.startswith(prefix)}
        for key, value in ours.items():
            assert torch.equal(value, official[prefix + key].float()), key
        assert model.sem_seg_head.class_embed.weight.equal(head_before)  # the head stays as built
    # a DINOv2 config refuses it in one line
    config.write_text(small_cfg().dump())
    proc = subprocess.run([sys.executable, str(REF.parents[2] / "tools" / "convert-dinov3-to-d2.py"),
                           str(ref.path / "dinov3_base.pth"), str(tmp_path / "x.safetensors"), "--config-file",
                           str(config)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
