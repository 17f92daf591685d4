"""The config keys of EoMT (``MODEL.EOMT.*`` and the solver keys of its training recipe).

Names follow the official ``configs/dinov2/**.yaml`` where they exist (``num_blocks``,
``backbone_name``, ``img_size``, ``attn_mask_annealing_*``, ``llrd``, ``warmup_steps``). What
EoMT shares with the other mask-classification models stays where those read it: the number of
classes (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``), of queries (``MODEL.MASK_FORMER.NUM_OBJECT_QUERIES``,
the official ``num_q``), the loss weights and point sampling (``MODEL.MASK_FORMER.*_WEIGHT``,
``TRAIN_NUM_POINTS``, ...) and the output tasks and their thresholds (``MODEL.MASK_FORMER.TEST``).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_eomt_config"]


def add_eomt_config(cfg: CN) -> None:
    """Add EoMT's keys to ``cfg`` (calling it twice is harmless)."""
    if hasattr(cfg.MODEL, "EOMT"):
        return
    e = cfg.MODEL.EOMT = CN()
    # ---- the ViT (a timm VisionTransformer; modeling/backbone/eomt_vit.py)
    e.BACKBONE_NAME = "vit_large_patch14_reg4_dinov2"  # the timm architecture, or a DINOv3 (below)
    e.PATCH_SIZE = 16  # official: DINOv2's 14 resampled to 16
    # the fixed network input (H, W): images are padded (bottom/right, with black) to it;
    # the position embeddings are for this grid
    e.IMG_SIZE = [640, 640]
    # ours, for small models: 0 keeps the architecture's value
    e.EMBED_DIM = 0
    e.DEPTH = 0
    e.NUM_HEADS = 0
    # DINOv3 (BACKBONE_NAME a transformers id such as "facebook/dinov3-vitl16-pretrain-lvd1689m", or
    # a local folder): the official checkpoints hold deltas to the DINOv3 weights (official
    # delta_weights); BACKBONE_WEIGHTS is that DINOv3 file (model.safetensors), read when an
    # official checkpoint is loaded with DELTA_WEIGHTS on
    e.DELTA_WEIGHTS = False
    e.BACKBONE_WEIGHTS = ""
    # ---- the queries and the masked attention
    e.NUM_BLOCKS = 4  # the last NUM_BLOCKS ViT blocks process the queries with the patch tokens
    e.MASKED_ATTN_ENABLED = True  # predict before each of those blocks and mask its attention
    # probability of the mask of each query block, 1 -> 0 as (1 - progress) ** POWER between
    # START_STEPS[i] and END_STEPS[i] (iterations); [] = always 1 (no annealing)
    e.ATTN_MASK_ANNEALING_ENABLED = True
    e.ATTN_MASK_ANNEALING_START_STEPS = []
    e.ATTN_MASK_ANNEALING_END_STEPS = []
    e.ATTN_MASK_ANNEALING_POWER = 0.9  # official: the LR's poly_power
    # ---- inference
    e.TEST = CN()
    # semantic output by sliding square windows of IMG_SIZE over an image whose short side the
    # test mapper resized to IMG_SIZE (official semantic evaluation); False: one padded input
    e.TEST.SLIDING_WINDOW = False

    # ---- solver (engine/eomt_solver.py): layer-wise LR decay and the two-stage warm-up
    s = cfg.SOLVER
    s.LLRD = 1.0  # block i of L gets BASE_LR * LLRD ** (L - 1 - i); embeddings LLRD ** (L - 1)
    s.LLRD_L2_ENABLED = True  # official: the query blocks decay too
    # LR_SCHEDULER_NAME "TwoStageWarmupPolyLR": the head warms up over WARMUP_ITERS, the ViT
    # stays at 0 until then and warms up over BACKBONE_WARMUP_ITERS; both decay by POLY_LR_POWER
    s.BACKBONE_WARMUP_ITERS = 1000
