"""A tiny random-weight MaskFormer config for the demo / checkpoint tests (ResNet-18, 64-dim head).

Built from the shipped ADE20K R50 config with the overrides of the official reference case
``semantic_r18_small``, plus the metadata of the built-in shapes panoptic dataset (7 classes,
4 of them things) so that semantic, instance and panoptic output all work.
"""
from pathlib import Path
from typing import Sequence

from detectron2.config import CfgNode, get_cfg

from maskformer_d2 import add_maskformer_config

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "ade20k-150" / "maskformer_R50_bs16_160k.yaml"


def tiny_cfg(num_classes: int = 7, overrides: Sequence = ()) -> CfgNode:
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.merge_from_list([
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64, "MODEL.SEM_SEG_HEAD.MASK_DIM", 64,
        "MODEL.MASK_FORMER.HIDDEN_DIM", 64, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 128,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 8, "MODEL.MASK_FORMER.DEC_LAYERS", 2,
        "MODEL.MASK_FORMER.DROPOUT", 0.0,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes,
        "DATASETS.TRAIN", ("shapes_panoptic_train",), "DATASETS.TEST", ("shapes_panoptic_val",),
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 128,
        *overrides,
    ])
    return cfg


def save_tiny_model(root: Path) -> CfgNode:
    """Write ``root/model.pth`` (random weights, seed 0) and ``root/config.yaml`` (its
    MODEL.WEIGHTS set to that file) of :func:`tiny_cfg`; returns the config."""
    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = tiny_cfg()
    torch.save({"model": build_model(cfg).state_dict()}, root / "model.pth")
    cfg.MODEL.WEIGHTS = str(root / "model.pth")
    (root / "config.yaml").write_text(cfg.dump())
    return cfg
