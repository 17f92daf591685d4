"""EoMT: the meta-architecture (META_ARCH_REGISTRY "EoMT") and its ViT backbone
(BACKBONE_REGISTRY "EoMTViT") register on import."""
from ..backbone.eomt_vit import EoMTViT
from .head import EoMTHead
from .mask_annealing import MaskAnnealing, annealed_probability
from .meta_arch import EoMT

__all__ = ["EoMT", "EoMTViT", "EoMTHead", "MaskAnnealing", "annealed_probability"]
