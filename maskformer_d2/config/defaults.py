"""Every config key maskformer_d2 reads, with its default.

``add_maskformer_config(cfg)`` is all a caller needs: it also adds detectron2's DeepLab keys
(poly LR, ResNet stem type / multi-grid) that the official YAMLs use, so official configs load
unchanged.
"""
import logging

import torch
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

from ..inference.tasks import TASKS
from .eomt import add_eomt_config


def add_maskformer_config(cfg: CN) -> None:
    """Add MaskFormer's keys (the official ``add_mask_former_config`` ones plus ours) to ``cfg``.

    Calling it twice is harmless.
    """
    if hasattr(cfg.MODEL, "MASK_FORMER"):
        return
    add_deeplab_config(cfg)  # poly LR, ResNet stem type / multi-grid, SINGLE_CATEGORY_MAX_AREA

    # ---- data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    # pad image and label in the mapper (-1: no padding)
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # large-scale jitter (LSJ) mappers for COCO: square crop of IMAGE_SIZE after scaling in [MIN, MAX]
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # what to do with an image that cannot be read: "error" stops with its path, "skip" warns and
    # skips it (counted in the log)
    cfg.INPUT.ON_BAD_IMAGE = "error"

    # ---- solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    # ---- model
    mf = cfg.MODEL.MASK_FORMER = CN()
    # loss
    mf.DEEP_SUPERVISION = True
    mf.NO_OBJECT_WEIGHT = 0.1
    mf.CLASS_WEIGHT = 1.0  # Mask2Former's key; MaskFormer's official loss uses 1.0
    mf.DICE_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
    # point-sampled mask loss and matching (Mask2Former's keys; see modeling/point_sampling.py):
    # 0 = the dense loss of the official MaskFormer; -1 = the default of the model family
    # (modeling/recipe.py: 0 for MaskFormer, 112 * 112 for Mask2Former, as the official defaults)
    mf.TRAIN_NUM_POINTS = -1
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    # transformer
    mf.NHEADS = 8
    mf.DROPOUT = 0.1
    mf.DIM_FEEDFORWARD = 2048
    mf.ENC_LAYERS = 0
    mf.DEC_LAYERS = 6
    mf.PRE_NORM = False
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.TRANSFORMER_IN_FEATURE = "res5"
    # ours: the transformer predictor, by name in TRANSFORMER_PREDICTOR_REGISTRY
    mf.TRANSFORMER_DECODER_NAME = "TransformerPredictor"
    # inference
    mf.TEST = CN()
    # SEMANTIC_ON, INSTANCE_ON, PANOPTIC_ON, ...: one switch per output task (maskformer_d2.inference.tasks)
    for task in TASKS.values():
        mf.TEST[task.config_flag] = task.enabled_by_default
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # some backbones (ResNet) report size_divisibility 0; this overrides it
    mf.SIZE_DIVISIBILITY = 32

    # ---- sem-seg head / pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Mask2Former's multi-scale deformable-attention pixel decoder (MSDeformAttnPixelDecoder):
    # the backbone features its encoder attends to. N_POINTS / N_HEADS are accepted because the
    # official configs define them, but the official decoder ignores them (it uses
    # MASK_FORMER.NHEADS heads and 4 points per head and level), and so does ours: same outputs
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # ours: training recomputes the deformable encoder's layers in backward instead of keeping
    # their activations (same values, less peak memory, one more encoder forward: measured in
    # docs/performance.md); only where the tokens hold >= 2^21 values
    cfg.MODEL.SEM_SEG_HEAD.RECOMPUTE_ENCODER = True

    # ---- Swin backbone
    sw = cfg.MODEL.SWIN = CN()
    sw.PRETRAIN_IMG_SIZE = 224
    sw.PATCH_SIZE = 4
    sw.EMBED_DIM = 96
    sw.DEPTHS = [2, 2, 6, 2]
    sw.NUM_HEADS = [3, 6, 12, 24]
    sw.WINDOW_SIZE = 7
    sw.MLP_RATIO = 4.0
    sw.QKV_BIAS = True
    sw.QK_SCALE = None
    sw.DROP_RATE = 0.0
    sw.ATTN_DROP_RATE = 0.0
    sw.DROP_PATH_RATE = 0.3
    sw.APE = False
    sw.PATCH_NORM = True
    sw.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    sw.USE_CHECKPOINT = False

    # ---- evaluation and inference (ours)
    # images per inference batch in --eval-only and periodic evaluation (detectron2 has 1); each
    # image's output equals its output alone (images that pad to different sizes run apart)
    cfg.TEST.IMS_PER_BATCH = 1
    # "fast": evaluators with detectron2's numbers in less time (maskformer_d2.evaluation);
    # "detectron2": the stock ones
    cfg.TEST.EVALUATOR = "fast"
    # "fp32" (exact), or "bf16": the network under autocast in bfloat16 where the CPU (or GPU)
    # has bf16 units, else fp32 with one warning (maskformer_d2.inference.precision)
    cfg.TEST.PRECISION = "fp32"

    # ---- our extras
    # the built-in synthetic dataset (maskformer_d2.data.datasets.shapes)
    cfg.DATASETS.SHAPES = CN()
    cfg.DATASETS.SHAPES.ROOT = ""  # "" -> $MASKFORMER_D2_CACHE or ~/.cache/maskformer_d2/shapes
    cfg.DATASETS.SHAPES.NUM_TRAIN = 2000
    cfg.DATASETS.SHAPES.NUM_VAL = 200
    cfg.DATASETS.SHAPES.IMAGE_SIZE = 128

    # ---- added by the sem-seg head owner (transformer_decoder/maskformer_transformer_decoder.py)
    # the official key (default False): give the transformer predictor a 1x1 conv input
    # projection even when the input already has HIDDEN_DIM channels
    mf.ENFORCE_INPUT_PROJ = False

    # ---- EoMT (MODEL.EOMT.*, its solver keys)
    add_eomt_config(cfg)


def resolve_device(cfg: CN) -> CN:
    """``cfg`` itself, or a copy on the CPU when ``MODEL.DEVICE`` asks for CUDA and there is none.

    The one place where that fallback is decided (train_net.py and the predictor both use it);
    it logs one warning.
    """
    if not cfg.MODEL.DEVICE.startswith("cuda") or torch.cuda.is_available():
        return cfg
    logging.getLogger(__name__).warning(
        "MODEL.DEVICE is %s but CUDA is not available: running on the CPU", cfg.MODEL.DEVICE)
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    if frozen:
        cfg.freeze()
    return cfg
