"""Every config key maskformer_d2 reads, with its default.

``add_maskformer_config(cfg)`` is all a caller needs: it also adds detectron2's DeepLab keys
(poly LR, ResNet stem type / multi-grid) that the official YAMLs use, so official configs load
unchanged.
"""
from detectron2.config import CfgNode as CN


def _add_deeplab_keys(cfg: CN) -> None:
    """The keys of detectron2's ``projects/deeplab`` config that official MaskFormer YAMLs use."""
    try:
        from detectron2.projects.deeplab import add_deeplab_config
    except ImportError:  # an install of detectron2 without its bundled projects
        add_deeplab_config = None
    if add_deeplab_config is not None:
        add_deeplab_config(cfg)
        return
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "hard_pixel_mining"
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_FEATURES = ["res2"]
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [48]
    cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 256
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [6, 12, 18]
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.1
    cfg.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = False
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"


def add_maskformer_config(cfg: CN) -> None:
    """Add MaskFormer's keys (the official ``add_mask_former_config`` ones plus ours) to ``cfg``.

    Calling it twice is harmless.
    """
    if hasattr(cfg.MODEL, "MASK_FORMER"):
        return
    _add_deeplab_keys(cfg)

    # ---- data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    # retry random crops until no single category covers more than this fraction of the crop
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
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
    mf.DICE_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
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
    mf.TEST.SEMANTIC_ON = True  # ours (the official model always returned sem_seg)
    mf.TEST.INSTANCE_ON = False  # ours: instance segmentation from the same predictions
    mf.TEST.PANOPTIC_ON = False
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.SEMANTIC_INFERENCE_METHOD = "probabilistic"
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # some backbones (ResNet) report size_divisibility 0; this overrides it
    mf.SIZE_DIVISIBILITY = 32

    # ---- sem-seg head / pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"

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

    # ---- our extras
    # the built-in synthetic dataset (maskformer_d2.data.datasets.shapes)
    cfg.DATASETS.SHAPES = CN()
    cfg.DATASETS.SHAPES.ROOT = ""  # "" -> $MASKFORMER_D2_CACHE or ~/.cache/maskformer_d2/shapes
    cfg.DATASETS.SHAPES.NUM_TRAIN = 2000
    cfg.DATASETS.SHAPES.NUM_VAL = 200
    cfg.DATASETS.SHAPES.IMAGE_SIZE = 128

    # ---- added by the sem-seg head owner (transformer_decoder/transformer_predictor.py)
    # the official key (default False): give the transformer predictor a 1x1 conv input
    # projection even when the input already has HIDDEN_DIM channels
    mf.ENFORCE_INPUT_PROJ = False
