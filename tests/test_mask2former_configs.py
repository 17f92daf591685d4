"""Specification of the mirrored Mask2Former image configs: they load unchanged and are usable.

* ``configs/{ade20k,cityscapes,coco,mapillary-vistas}/`` hold every image config of the official
  Mask2Former ``configs/`` tree (its ``youtubevis_*`` video configs are not mirrored), copied
  byte for byte to the same relative path;
* each loads through the command-line reader (safe YAML) to the values yacs' own loader gives;
* each model config names the masked-attention decoder and the deformable-attention pixel decoder;
* the datasets and the dataset mapper each config names are registered, with the metadata the
  mapper and the panoptic / instance output read.

Nothing here builds a model or reads a dataset.
"""
from functools import lru_cache
from pathlib import Path
from typing import List

import pytest
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from test_configs import CONFIGS
from test_configs import load_config as yacs_load_config

import maskformer_d2  # noqa: F401  (registers datasets and mappers)
from maskformer_d2.config import load_config
from maskformer_d2.data import train_ignore_label
from maskformer_d2.data.mappers import DATASET_MAPPER_REGISTRY, build_mapper

# the folders under configs/ that mirror the official Mask2Former configs/ tree
MASK2FORMER_TREES = ("ade20k", "cityscapes", "coco", "mapillary-vistas")

# every non-video file of facebookresearch/Mask2Former's configs/ (commit 9b0651c)
OFFICIAL_CONFIGS = [
    "ade20k/instance-segmentation/Base-ADE20K-InstanceSegmentation.yaml",
    "ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml",
    "ade20k/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml",
    "ade20k/panoptic-segmentation/Base-ADE20K-PanopticSegmentation.yaml",
    "ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml",
    "ade20k/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml",
    "ade20k/semantic-segmentation/Base-ADE20K-SemanticSegmentation.yaml",
    "ade20k/semantic-segmentation/maskformer2_R101_bs16_90k.yaml",
    "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
    "ade20k/semantic-segmentation/swin/maskformer2_swin_base_384_bs16_160k_res640.yaml",
    "ade20k/semantic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640.yaml",
    "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml",
    "ade20k/semantic-segmentation/swin/maskformer2_swin_small_bs16_160k.yaml",
    "ade20k/semantic-segmentation/swin/maskformer2_swin_tiny_bs16_160k.yaml",
    "cityscapes/instance-segmentation/Base-Cityscapes-InstanceSegmentation.yaml",
    "cityscapes/instance-segmentation/maskformer2_R101_bs16_90k.yaml",
    "cityscapes/instance-segmentation/maskformer2_R50_bs16_90k.yaml",
    "cityscapes/instance-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml",
    "cityscapes/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
    "cityscapes/instance-segmentation/swin/maskformer2_swin_small_bs16_90k.yaml",
    "cityscapes/instance-segmentation/swin/maskformer2_swin_tiny_bs16_90k.yaml",
    "cityscapes/panoptic-segmentation/Base-Cityscapes-PanopticSegmentation.yaml",
    "cityscapes/panoptic-segmentation/maskformer2_R101_bs16_90k.yaml",
    "cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml",
    "cityscapes/panoptic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml",
    "cityscapes/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
    "cityscapes/panoptic-segmentation/swin/maskformer2_swin_small_bs16_90k.yaml",
    "cityscapes/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_90k.yaml",
    "cityscapes/semantic-segmentation/Base-Cityscapes-SemanticSegmentation.yaml",
    "cityscapes/semantic-segmentation/maskformer2_R101_bs16_90k.yaml",
    "cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml",
    "cityscapes/semantic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml",
    "cityscapes/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
    "cityscapes/semantic-segmentation/swin/maskformer2_swin_small_bs16_90k.yaml",
    "cityscapes/semantic-segmentation/swin/maskformer2_swin_tiny_bs16_90k.yaml",
    "coco/instance-segmentation/Base-COCO-InstanceSegmentation.yaml",
    "coco/instance-segmentation/maskformer2_R101_bs16_50ep.yaml",
    "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "coco/instance-segmentation/swin/maskformer2_swin_base_384_bs16_50ep.yaml",
    "coco/instance-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml",
    "coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
    "coco/instance-segmentation/swin/maskformer2_swin_small_bs16_50ep.yaml",
    "coco/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
    "coco/panoptic-segmentation/Base-COCO-PanopticSegmentation.yaml",
    "coco/panoptic-segmentation/maskformer2_R101_bs16_50ep.yaml",
    "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_base_384_bs16_50ep.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_small_bs16_50ep.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
    "mapillary-vistas/panoptic-segmentation/Base-MapillaryVistas-PanopticSegmentation.yaml",
    "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml",
    "mapillary-vistas/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml",
    "mapillary-vistas/semantic-segmentation/Base-MapillaryVistas-SemanticSegmentation.yaml",
    "mapillary-vistas/semantic-segmentation/maskformer2_R50_bs16_300k.yaml",
    "mapillary-vistas/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml",
]

# the Base-*.yaml files hold data and solver settings only: no model
MODEL_CONFIGS = [p for p in OFFICIAL_CONFIGS if not Path(p).name.startswith("Base-")]


def mirrored_configs() -> List[str]:
    """The YAML files under the Mask2Former trees of configs/, relative to configs/, sorted."""
    return sorted(str(p.relative_to(CONFIGS)) for tree in MASK2FORMER_TREES
                  for p in (CONFIGS / tree).rglob("*.yaml"))


@lru_cache(maxsize=None)
def command_config(relpath: str) -> CfgNode:
    """configs/``relpath`` as the command-line tools read it (loaded once, frozen: shared)."""
    cfg = load_config(str(CONFIGS / relpath))
    cfg.freeze()
    return cfg


def config_datasets(cfg: CfgNode) -> List[str]:
    return list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)


# ------------------------------------------------------------------ the tree
def test_mirrored_configs_are_exactly_the_official_image_configs():
    assert len(OFFICIAL_CONFIGS) == len(set(OFFICIAL_CONFIGS)) == 57
    assert mirrored_configs() == sorted(OFFICIAL_CONFIGS)


# ------------------------------------------------------------------ loading
@pytest.mark.parametrize("relpath", OFFICIAL_CONFIGS)
def test_config_loads_safely_to_the_values_yacs_gives(relpath):
    """No unknown key, and the safe reader's list expressions evaluate as yacs' eval does."""
    assert command_config(relpath) == yacs_load_config(CONFIGS / relpath)


@pytest.mark.parametrize("relpath", MODEL_CONFIGS)
def test_model_config_names_the_mask2former_decoders(relpath):
    cfg = command_config(relpath)
    assert cfg.MODEL.META_ARCHITECTURE == "MaskFormer"
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == "MultiScaleMaskedTransformerDecoder"
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"
    assert cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS == 112 * 112  # the point-sampled loss


def test_coco_panoptic_r50_values():
    cfg = command_config("coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
    mf = cfg.MODEL.MASK_FORMER
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133
    assert (mf.DEC_LAYERS, mf.NUM_OBJECT_QUERIES, mf.TRAIN_NUM_POINTS) == (10, 100, 12544)
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT) == (
        2.0, 5.0, 5.0, 0.1)
    assert (mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO) == (3.0, 0.75)
    assert cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES == [
        "res3", "res4", "res5"]
    assert (mf.TEST.SEMANTIC_ON, mf.TEST.INSTANCE_ON, mf.TEST.PANOPTIC_ON) == (True, True, True)
    assert (cfg.INPUT.IMAGE_SIZE, cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE) == (1024, 0.1, 2.0)
    assert cfg.INPUT.DATASET_MAPPER_NAME == "coco_panoptic_lsj"
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_panoptic",)
    assert cfg.DATASETS.TEST == ("coco_2017_val_panoptic_with_sem_seg",)


def test_child_configs_override_their_bases():
    swin = command_config(
        "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml")
    assert swin.MODEL.BACKBONE.NAME == "D2SwinTransformer" and swin.MODEL.SWIN.EMBED_DIM == 192
    assert swin.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 200 and swin.SOLVER.MAX_ITER == 737500
    assert swin.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133  # from the R50 parent
    ade = command_config("ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml")
    assert tuple(ade.INPUT.MIN_SIZE_TRAIN) == tuple(int(x * 0.1 * 512) for x in range(5, 21))
    mapillary = command_config("mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml")
    assert mapillary.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 65
    assert mapillary.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 65
    assert mapillary.DATASETS.TRAIN == ("mapillary_vistas_panoptic_train",)


# ------------------------------------------------------------------ datasets and mappers
@pytest.mark.parametrize("relpath", OFFICIAL_CONFIGS)
def test_config_datasets_and_mapper_are_registered(relpath):
    cfg = command_config(relpath)
    missing = [name for name in config_datasets(cfg) if name not in DatasetCatalog]
    assert not missing, f"{relpath}: datasets {missing} are not registered"
    assert cfg.INPUT.DATASET_MAPPER_NAME in DATASET_MAPPER_REGISTRY


@pytest.mark.parametrize("relpath", MODEL_CONFIGS)
def test_config_datasets_have_the_metadata_the_model_reads(relpath):
    """Class names for every class, the thing ids instance / panoptic output needs, and the
    ignore label the mapper pads with."""
    cfg = command_config(relpath)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    test = cfg.MODEL.MASK_FORMER.TEST
    for name in config_datasets(cfg):
        meta = MetadataCatalog.get(name)
        assert num_classes in (len(meta.get("stuff_classes", [])),
                               len(meta.get("thing_classes", []))), name
        if test.INSTANCE_ON or test.PANOPTIC_ON:
            thing_ids = set(meta.get("thing_dataset_id_to_contiguous_id", {}).values())
            assert thing_ids and thing_ids <= set(range(num_classes)), name
    assert train_ignore_label(cfg) == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE


def test_mapillary_vistas_panoptic_registration():
    meta = MetadataCatalog.get("mapillary_vistas_panoptic_train")
    assert len(meta.stuff_classes) == len(meta.thing_classes) == 65
    assert meta.stuff_classes[0] == "Bird" and meta.stuff_classes[-1] == "Ego Vehicle"
    assert len(meta.thing_dataset_id_to_contiguous_id) == 37  # classes with instances
    assert meta.thing_dataset_id_to_contiguous_id[1] == 0  # Bird: json id = label value + 1
    assert meta.stuff_dataset_id_to_contiguous_id == {i + 1: i for i in range(65)}
    assert meta.ignore_label == 65 and meta.label_divisor == 1000
    assert meta.panoptic_json.endswith("mapillary_vistas/training/panoptic/panoptic_2018.json")
    assert meta.sem_seg_root.endswith("mapillary_vistas/training/labels")
    assert meta.get("json_file", None) is None  # no instance json: no instance evaluation


def test_cityscapes_instance_thing_ids_follow_the_loader_numbering():
    meta = MetadataCatalog.get("cityscapes_fine_instance_seg_train")
    assert meta.thing_dataset_id_to_contiguous_id == {
        24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}


@pytest.mark.parametrize("relpath", [
    "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
])
def test_coco_mappers_jitter_to_the_config_image_size(relpath):
    """Mask2Former's COCO recipe: flip, scale in [MIN_SCALE, MAX_SCALE] x IMAGE_SIZE, crop to at
    most IMAGE_SIZE square, padded to exactly that."""
    mapper = build_mapper(command_config(relpath), is_train=True)
    flip, scale, crop = mapper.augmentations.augs
    assert isinstance(flip, T.RandomFlip) and flip.horizontal
    assert isinstance(scale, T.ResizeScale) and (scale.min_scale, scale.max_scale) == (0.1, 2.0)
    assert (scale.target_height, scale.target_width) == (1024, 1024)
    assert isinstance(crop, T.FixedSizeCrop) and tuple(crop.crop_size) == (1024, 1024)
    assert mapper.fixed_size == (1024, 1024)
