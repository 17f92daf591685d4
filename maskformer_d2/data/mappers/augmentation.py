"""Training and test augmentations of the MaskFormer dataset mappers, built from the config.

Every mapper gets its augmentations from :func:`build_augmentations`; they differ only in the
*style* that picks the recipe:

* ``"maskformer"`` (official semantic / panoptic mappers): ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN,
  INPUT.MAX_SIZE_TRAIN, INPUT.MIN_SIZE_TRAIN_SAMPLING), then when INPUT.CROP.ENABLED a random crop
  that keeps any single category below INPUT.CROP.SINGLE_CATEGORY_MAX_AREA of the crop, then the SSD
  colour jitter when INPUT.COLOR_AUG_SSD, then a horizontal flip.
* ``"instance"`` (Mask2Former's instance mapper): the same but with a plain random crop (instance
  datasets have no semantic map to constrain the crop with).
* ``"lsj"`` (large-scale jitter, Mask2Former's COCO mappers): a flip per INPUT.RANDOM_FLIP, then the
  image is scaled to fit INPUT.IMAGE_SIZE x [INPUT.MIN_SCALE, INPUT.MAX_SCALE] and randomly cropped
  to at most INPUT.IMAGE_SIZE square (the mapper pads it to exactly that size).
* ``"detr"`` (official ``detr_panoptic`` mapper for COCO panoptic): a flip, then with probability
  1/2 a resize of the shortest edge to INPUT.MIN_SIZE_TRAIN, otherwise a resize to 400/500/600, a
  random crop of INPUT.CROP.SIZE and then the resize to INPUT.MIN_SIZE_TRAIN.

At test time every style is one deterministic ResizeShortestEdge(INPUT.MIN_SIZE_TEST,
INPUT.MAX_SIZE_TEST).
"""
import logging
from typing import List, Sequence, Union

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform

__all__ = ["AUGMENTATION_STYLES", "RandomChoice", "build_augmentations"]

logger = logging.getLogger(__name__)

AUGMENTATION_STYLES = ("maskformer", "instance", "lsj", "detr")

AugmentationLike = Union[T.Augmentation, T.Transform]


class RandomChoice(T.Augmentation):
    """Apply one of two augmentation lists, the first with probability ``prob``.

    DETR's COCO recipe ("resize" or "resize, crop, resize") is expressed with it.
    """

    def __init__(self, first: Sequence[AugmentationLike], second: Sequence[AugmentationLike],
                 prob: float = 0.5):
        super().__init__()
        self.first = T.AugmentationList(list(first))
        self.second = T.AugmentationList(list(second))
        self.prob = prob

    def __call__(self, aug_input: T.AugInput) -> T.Transform:
        chosen = self.first if np.random.rand() < self.prob else self.second
        return chosen(aug_input)

    def __repr__(self) -> str:
        return f"RandomChoice(p={self.prob}: {self.first} | {self.second})"


def _flip(cfg: CfgNode) -> List[T.Augmentation]:
    """The flip of INPUT.RANDOM_FLIP ("horizontal", "vertical" or "none")."""
    mode = cfg.INPUT.RANDOM_FLIP
    if mode == "none":
        return []
    if mode not in ("horizontal", "vertical"):
        raise ValueError(
            f"INPUT.RANDOM_FLIP is {mode!r}; use 'horizontal', 'vertical' or 'none'")
    return [T.RandomFlip(horizontal=mode == "horizontal", vertical=mode == "vertical")]


def _train_resize(cfg: CfgNode) -> T.Augmentation:
    return T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)


def build_augmentations(cfg: CfgNode, is_train: bool, style: str = "maskformer"
                        ) -> List[AugmentationLike]:
    """The augmentation list of a mapper (see the module docstring for the recipes).

    Args:
        cfg: a config with :func:`maskformer_d2.config.add_maskformer_config` keys.
        is_train: training (random) or test (deterministic resize) augmentations.
        style: one of :data:`AUGMENTATION_STYLES`.
    """
    if style not in AUGMENTATION_STYLES:
        raise ValueError(f"augmentation style {style!r} is unknown; known: {AUGMENTATION_STYLES}")
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]

    if style == "lsj":
        size = cfg.INPUT.IMAGE_SIZE
        return _flip(cfg) + [
            T.ResizeScale(min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE,
                          target_height=size, target_width=size),
            # no padding here: the mapper pads image and every target alike to (size, size)
            T.FixedSizeCrop(crop_size=(size, size), pad=False),
        ]

    if style == "detr":
        augs: List[AugmentationLike] = [T.RandomFlip()]
        if cfg.INPUT.CROP.ENABLED:
            crop_then_resize = [
                T.ResizeShortestEdge([400, 500, 600], sample_style="choice"),
                T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
                _train_resize(cfg),
            ]
            augs.append(RandomChoice([_train_resize(cfg)], crop_then_resize, prob=0.5))
        else:
            augs.append(_train_resize(cfg))
        return augs

    augs = [_train_resize(cfg)]
    if cfg.INPUT.CROP.ENABLED:
        if style == "instance":
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        else:
            augs.append(T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs
