"""What differs between the MaskFormer and the Mask2Former recipe, decided in one place.

Both families are built by the same meta-architecture from the same registries; official
configs of either family name their transformer decoder (``MODEL.MASK_FORMER.
TRANSFORMER_DECODER_NAME``), and the decoder class says which recipe it follows through a
class attribute ``RECIPE`` ("maskformer" when absent). The recipe fixes the choices the two
official implementations make differently without a config key:

=============================  ==========================  ==============================
                               MaskFormer                  Mask2Former
=============================  ==========================  ==============================
TRAIN_NUM_POINTS = -1 means    0 (dense loss)              112 * 112 points
mask loss and matching cost    sigmoid focal               sigmoid cross-entropy (points)
panoptic segment               pixels it wins              pixels it wins AND mask >= 0.5
masks resized to the output    after semantic inference    before, when panoptic or
                               (unless SEM_SEG_POST...)    instance output is on
instance classes kept          thing classes               thing classes only with
                                                           panoptic output on
=============================  ==========================  ==============================
"""
from dataclasses import dataclass

__all__ = ["Recipe", "RECIPES", "recipe_of", "num_train_points"]


@dataclass(frozen=True)
class Recipe:
    """The training and inference choices of one model family (see the module docstring)."""

    name: str
    default_num_points: int
    mask_loss: str
    panoptic_segment_within_own_mask: bool
    resize_masks_first_for_panoptic_or_instance: bool
    instance_things_only_with_panoptic: bool


RECIPES = {
    "maskformer": Recipe("maskformer", 0, "focal", False, False, False),
    "mask2former": Recipe("mask2former", 112 * 112, "bce", True, True, True),
}


def recipe_of(cfg) -> Recipe:
    """The recipe of the transformer decoder ``cfg`` names (its class's ``RECIPE``)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    from .transformer_decoder.build import TRANSFORMER_PREDICTOR_REGISTRY

    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    cls = TRANSFORMER_PREDICTOR_REGISTRY.get(name) if name in TRANSFORMER_PREDICTOR_REGISTRY else None
    meta = cfg.MODEL.META_ARCHITECTURE  # a meta-architecture without decoder (EoMT) declares it
    if getattr(META_ARCH_REGISTRY.get(meta) if meta in META_ARCH_REGISTRY else None, "RECIPE", None):
        cls, name = META_ARCH_REGISTRY.get(meta), meta
    recipe = getattr(cls, "RECIPE", "maskformer")
    if recipe not in RECIPES:
        raise ValueError(f"transformer decoder {name!r} declares RECIPE={recipe!r}; "
                         f"known recipes: {sorted(RECIPES)}")
    return RECIPES[recipe]


def num_train_points(cfg) -> int:
    """``MODEL.MASK_FORMER.TRAIN_NUM_POINTS`` with -1 resolved to the recipe's default."""
    points = cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS
    if points < -1:
        raise ValueError(f"MODEL.MASK_FORMER.TRAIN_NUM_POINTS={points}: use a number of points, "
                         "0 for the dense loss or -1 for the model family's default")
    return recipe_of(cfg).default_num_points if points == -1 else points
