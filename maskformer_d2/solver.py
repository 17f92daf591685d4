"""The official MaskFormer optimiser recipe on top of detectron2's solver.

AdamW (or SGD) with a learning-rate multiplier for the backbone, no weight decay on norm layers
(``SOLVER.WEIGHT_DECAY_NORM``) and embeddings (``SOLVER.WEIGHT_DECAY_EMBED``), and optional
gradient clipping over the whole model (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: full_model``).
"""
import itertools
from typing import Any, Dict, List, Type

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_optimizer", "param_groups"]

_NORMS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
# parameters that are embeddings in all but type (Swin's tables, learned positional embeddings)
_EMBED_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def param_groups(model: nn.Module, cfg: CfgNode) -> List[Dict[str, Any]]:
    """Parameter groups by (lr, weight decay), per the official recipe.

    Parameters sharing both values share a group (the official code made one group per
    parameter), so the optimiser can update each group with one multi-tensor kernel.
    """
    s = cfg.SOLVER
    groups: Dict[tuple, Dict[str, Any]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or p in seen:
                continue
            seen.add(p)
            lr, wd = s.BASE_LR, s.WEIGHT_DECAY
            if module_name.startswith("backbone") or ".backbone." in module_name:
                lr = lr * s.BACKBONE_MULTIPLIER
            if isinstance(module, _NORMS):
                wd = s.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding) or name in _EMBED_NAMES:
                wd = s.WEIGHT_DECAY_EMBED
            groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd})["params"].append(p)
    return list(groups.values())


def _with_full_model_clipping(optim_cls: Type[torch.optim.Optimizer], max_norm: float):
    """A subclass of ``optim_cls`` whose ``step`` first clips the norm over all parameters."""

    class FullModelClipped(optim_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelClipped.__name__ = f"FullModelClipped{optim_cls.__name__}"
    return FullModelClipped


def _optimizer_class(cfg: CfgNode) -> Type[torch.optim.Optimizer]:
    name = cfg.SOLVER.OPTIMIZER.upper()
    classes = {"SGD": torch.optim.SGD, "ADAMW": torch.optim.AdamW}
    if name not in classes:
        raise ValueError(f"SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r} is not supported; use one of {sorted(classes)}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return _with_full_model_clipping(classes[name], clip.CLIP_VALUE)
    return maybe_add_gradient_clipping(cfg, classes[name])  # d2's per-parameter clipping


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser for ``model`` (``SOLVER.OPTIMIZER``: ADAMW or SGD)."""
    groups = param_groups(model, cfg)
    cls = _optimizer_class(cfg)
    if cfg.SOLVER.OPTIMIZER.upper() == "SGD":
        return cls(groups, cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, foreach=True)
    return cls(groups, cfg.SOLVER.BASE_LR, foreach=True)
