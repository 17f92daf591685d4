"""Specification of the EoMT configs: configs/eomt/dinov2/ and configs/eomt/dinov3/ mirror the
official configs/dinov2/ and configs/dinov3/ trees of tue-mps/eomt (commit 7bd19dd) with their
hyper-parameters, and every EoMT config, the shapes recipe included, builds a model (with a tiny
ViT so that it is quick).

Official values below were read from the official YAMLs (a model's ``num_q``, ``num_blocks``,
``backbone_name``, ``img_size``, annealing steps, ``max_epochs``) and its dataset classes (the
default ``img_size``: 640 COCO / ADE20K panoptic, 512 ADE20K semantic, 1024 Cityscapes).
"""
from pathlib import Path

import pytest
from detectron2.modeling import build_model

import maskformer_d2  # noqa: F401  (registers EoMT and the datasets)
from maskformer_d2.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
L, B, S, G = (f"vit_{s}_patch14_reg4_dinov2" for s in ("large", "base", "small", "giant"))
COCO4 = ([14782, 29564, 44346, 59128], [29564, 44346, 59128, 73910])
COCO3 = ([14782, 36955, 59128], [29564, 51737, 73910])
COCO3_2X = ([29564, 73910, 118256], [59128, 103474, 147820])
COCO5 = ([14782, 25869, 36955, 48042, 59128], [29564, 40651, 51737, 62824, 73910])
ADE4 = ([6520, 13040, 19560, 26080], [13040, 19560, 26080, 32600])
ADE5 = ([6520, 11410, 16300, 21190, 26080], [13040, 17930, 22820, 27710, 32600])

# relative path -> (backbone, input size, query blocks, queries, (start, end) steps, epochs)
OFFICIAL = {
    "ade20k/panoptic/eomt_giant_1280.yaml": (G, 1280, 5, 200, ADE5, 31),
    "ade20k/panoptic/eomt_giant_640.yaml": (G, 640, 5, 200, ADE5, 31),
    "ade20k/panoptic/eomt_large_1280.yaml": (L, 1280, 4, 200, ADE4, 31),
    "ade20k/panoptic/eomt_large_640.yaml": (L, 640, 4, 200, ADE4, 31),
    "ade20k/semantic/eomt_large_512.yaml": (L, 512, 4, 100, ADE4, 31),
    "cityscapes/semantic/eomt_large_1024.yaml": (
        L, 1024, 4, 100, ([3317, 6634, 9951, 13268], [6634, 9951, 13268, 16585]), 107),
    "coco/instance/eomt_large_1280.yaml": (L, 1280, 4, 200, COCO4, 12),
    "coco/instance/eomt_large_640.yaml": (L, 640, 4, 200, COCO4, 12),
    "coco/panoptic/eomt_base_640.yaml": (B, 640, 3, 200, COCO3, 12),
    "coco/panoptic/eomt_base_640_2x.yaml": (B, 640, 3, 200, COCO3_2X, 24),
    "coco/panoptic/eomt_giant_1280.yaml": (G, 1280, 5, 200, COCO5, 12),
    "coco/panoptic/eomt_giant_640.yaml": (G, 640, 5, 200, COCO5, 12),
    "coco/panoptic/eomt_large_1280.yaml": (L, 1280, 4, 200, COCO4, 12),
    "coco/panoptic/eomt_large_640.yaml": (L, 640, 4, 200, COCO4, 12),
    "coco/panoptic/eomt_small_640.yaml": (S, 640, 3, 200, COCO3, 12),
    "coco/panoptic/eomt_small_640_2x.yaml": (S, 640, 3, 200, COCO3_2X, 24),
}
# DINOv3 (configs/dinov3): transformers' models, LR 2e-4, warm-ups [2000, 3000], query blocks not
# decayed (llrd_l2_enabled False; ADE20K: llrd 1.0, lr_mult 0.1), delta weights
L3, B3, S3 = (f"facebook/dinov3-vit{s}16-pretrain-lvd1689m" for s in ("l", "b", "s"))
COCO4_3 = ([0, 29564, 44346, 59128], [3000, 44346, 59128, 73910])
COCO3_2X_3 = ([0, 73910, 118256], [3000, 103474, 147820])
OFFICIAL_DINOV3 = {
    "ade20k/semantic/eomt_large_512.yaml": (
        L3, 512, 4, 100, ([0, 6520, 9780, 13040], [3000, 9780, 13040, 16300]), 16),
    "coco/instance/eomt_large_1280.yaml": (L3, 1280, 4, 200, COCO4, 12),
    "coco/instance/eomt_large_640.yaml": (L3, 640, 4, 200, COCO4, 12),
    "coco/panoptic/eomt_base_640_2x.yaml": (B3, 640, 3, 200, COCO3_2X_3, 24),
    "coco/panoptic/eomt_large_1280.yaml": (L3, 1280, 4, 200, COCO4_3, 12),
    "coco/panoptic/eomt_large_640.yaml": (L3, 640, 4, 200, COCO4_3, 12),
    "coco/panoptic/eomt_small_640_2x.yaml": (S3, 640, 3, 200, COCO3_2X_3, 24),
}
ITERS_PER_EPOCH = {"coco": 7391, "ade20k": 1264}  # 118287 / 20210 images, batch 16
TASKS = {"panoptic": "PANOPTIC_ON", "instance": "INSTANCE_ON", "semantic": "SEMANTIC_ON"}
EOMT_CONFIGS = (sorted(CONFIGS.glob("eomt/dinov2/*/*/eomt_*.yaml"))
                + sorted(CONFIGS.glob("eomt/dinov3/*/*/eomt_*.yaml")) + sorted(CONFIGS.glob("shapes/eomt_*.yaml")))


@pytest.mark.parametrize("tree, official", [("dinov2", OFFICIAL), ("dinov3", OFFICIAL_DINOV3)])
def test_every_official_config_has_a_counterpart_and_no_other(tree, official):
    ours = {str(p.relative_to(CONFIGS / "eomt" / tree)) for p in CONFIGS.glob(f"eomt/{tree}/*/*/eomt_*.yaml")}
    assert ours == set(official)


@pytest.mark.parametrize("relpath", sorted(OFFICIAL))
def test_config_has_the_official_hyper_parameters(relpath):
    backbone, size, blocks, queries, (starts, ends), epochs = OFFICIAL[relpath]
    cfg = load_config(str(CONFIGS / "eomt" / "dinov2" / relpath))
    e, s = cfg.MODEL.EOMT, cfg.SOLVER
    assert (e.BACKBONE_NAME, e.PATCH_SIZE, list(e.IMG_SIZE)) == (backbone, 16, [size, size])
    assert (e.NUM_BLOCKS, cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES) == (blocks, queries)
    assert (list(e.ATTN_MASK_ANNEALING_START_STEPS), list(e.ATTN_MASK_ANNEALING_END_STEPS)) == (starts, ends)
    # the official annealing ends after 5/6 of its epochs (2x: 20 of 24)
    assert s.MAX_ITER == ends[-1] * 6 // 5
    assert (s.BASE_LR, s.LLRD, s.WEIGHT_DECAY) == (1e-4, 0.8, 0.05)
    assert (s.WARMUP_ITERS, s.BACKBONE_WARMUP_ITERS, s.POLY_LR_POWER, s.IMS_PER_BATCH) == (500, 1000, 0.9, 16)
    assert (s.LLRD_L2_ENABLED, e.DELTA_WEIGHTS) == (True, False)
    _check_shared(cfg, relpath, size)


@pytest.mark.parametrize("relpath", sorted(OFFICIAL_DINOV3))
def test_dinov3_config_has_the_official_hyper_parameters(relpath):
    backbone, size, blocks, queries, (starts, ends), epochs = OFFICIAL_DINOV3[relpath]
    cfg = load_config(str(CONFIGS / "eomt" / "dinov3" / relpath))
    e, s = cfg.MODEL.EOMT, cfg.SOLVER
    assert (e.BACKBONE_NAME, e.PATCH_SIZE, list(e.IMG_SIZE)) == (backbone, 16, [size, size])
    assert (e.NUM_BLOCKS, cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES) == (blocks, queries)
    assert (list(e.ATTN_MASK_ANNEALING_START_STEPS), list(e.ATTN_MASK_ANNEALING_END_STEPS)) == (starts, ends)
    assert s.MAX_ITER == epochs * ITERS_PER_EPOCH[relpath.split("/")[0]]
    llrd = 1.0 if relpath.startswith("ade20k") else 0.8
    assert (s.BASE_LR, s.LLRD, s.LLRD_L2_ENABLED, s.WEIGHT_DECAY) == (2e-4, llrd, False, 0.05)
    assert (s.WARMUP_ITERS, s.BACKBONE_WARMUP_ITERS, s.POLY_LR_POWER, s.IMS_PER_BATCH) == (2000, 3000, 0.9, 16)
    assert e.DELTA_WEIGHTS and e.BACKBONE_WEIGHTS == ""
    _check_shared(cfg, relpath, size)


def _check_shared(cfg, relpath, size):
    """What the DINOv2 and DINOv3 configs share: the loss, thresholds, tasks and test inputs."""
    e, s = cfg.MODEL.EOMT, cfg.SOLVER
    assert cfg.MODEL.META_ARCHITECTURE == "EoMT" and cfg.MODEL.BACKBONE.NAME == "EoMTViT"
    assert s.WEIGHT_DECAY_NORM == s.WEIGHT_DECAY_EMBED == 0.05  # officially every parameter decays
    assert (s.LR_SCHEDULER_NAME, s.CLIP_GRADIENTS.CLIP_VALUE) == ("TwoStageWarmupPolyLR", 0.01)
    mf = cfg.MODEL.MASK_FORMER
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT) == (2.0, 5.0, 5.0, 0.1)
    assert (mf.TRAIN_NUM_POINTS, mf.TEST.OBJECT_MASK_THRESHOLD, mf.TEST.OVERLAP_THRESHOLD) == (12544, 0.8, 0.8)
    task = relpath.split("/")[1]
    assert [t for t, flag in TASKS.items() if mf.TEST[flag]] == [task]
    assert e.TEST.SLIDING_WINDOW == (task == "semantic")
    if task == "semantic":  # windows over the image with its short side at the window size
        assert cfg.INPUT.MIN_SIZE_TEST == size and cfg.INPUT.MAX_SIZE_TEST > 4 * size
    else:  # the long side at the input size
        assert cfg.INPUT.MIN_SIZE_TEST == cfg.INPUT.MAX_SIZE_TEST == cfg.INPUT.IMAGE_SIZE == size


@pytest.mark.parametrize("path", EOMT_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_builds_a_model(path):
    cfg = load_config(str(path), [
        "MODEL.DEVICE", "cpu", "MODEL.EOMT.EMBED_DIM", 32, "MODEL.EOMT.NUM_HEADS", 2,
        "MODEL.EOMT.IMG_SIZE", [64, 64], "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 8])
    cfg.MODEL.EOMT.DEPTH = cfg.MODEL.EOMT.NUM_BLOCKS + 1
    model = build_model(cfg)
    assert type(model).__name__ == "EoMT"
    assert len(model.backbone.blocks) == cfg.MODEL.EOMT.NUM_BLOCKS + 1
    assert model.sem_seg_head.class_embed.out_features == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES + 1
    assert model.mask_annealing.end_steps == list(cfg.MODEL.EOMT.ATTN_MASK_ANNEALING_END_STEPS)
