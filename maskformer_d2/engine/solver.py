"""The official MaskFormer optimiser recipe on top of detectron2's solver.

AdamW (or SGD) with a learning-rate multiplier for the backbone, no weight decay on norm layers
(``SOLVER.WEIGHT_DECAY_NORM``) and embeddings (``SOLVER.WEIGHT_DECAY_EMBED``), and optional
gradient clipping over the whole model (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: full_model``).
"""
import itertools
from typing import Any, Dict, List, Type

import torch
from detectron2.config import CfgNode
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR as _D2WarmupPolyLR
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

from .eomt_solver import build_two_stage_lr_scheduler, with_layer_decay

__all__ = ["build_optimizer", "build_lr_scheduler", "param_groups", "WarmupPolyLR"]

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


def _kernel_kwargs(cfg: CfgNode) -> Dict[str, Any]:
    """Fused AdamW (the whole update in one kernel for all tensors rather than one kernel per
    operation; see docs/performance.md) unless AMP is on: a GradScaler hands fused optimisers
    still-scaled gradients, which full-model clipping must not see."""
    if cfg.SOLVER.OPTIMIZER.upper() == "ADAMW" and not cfg.SOLVER.AMP.ENABLED:
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser for ``model`` (``SOLVER.OPTIMIZER``: ADAMW or SGD)."""
    kwargs = _kernel_kwargs(cfg)
    if cfg.SOLVER.OPTIMIZER.upper() == "SGD":
        kwargs["momentum"] = cfg.SOLVER.MOMENTUM
    groups = with_layer_decay(model, cfg, param_groups(model, cfg))  # EoMT's ViT: per-block LR
    return _optimizer_class(cfg)(groups, cfg.SOLVER.BASE_LR, **kwargs)


class WarmupPolyLR(_D2WarmupPolyLR):
    """detectron2 DeepLab's poly schedule, except that the *config* decides its shape on resume.

    The upstream scheduler checkpoints ``max_iters`` and restores it, so resuming with a larger
    ``SOLVER.MAX_ITER`` drove ``1 - iter / max_iters`` below zero ("math domain error"). Here a
    checkpoint restores only the position (``last_epoch``) and base LRs; the schedule's length,
    warm-up and power come from the config of the resumed run.
    """

    _FROM_CONFIG = ("max_iters", "warmup_factor", "warmup_iters", "warmup_method", "power",
                    "constant_ending")

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self._FROM_CONFIG})


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``SOLVER.LR_SCHEDULER_NAME``: "WarmupPolyLR" (the official recipe), or any of d2's."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME == "TwoStageWarmupPolyLR":  # EoMT's
        return build_two_stage_lr_scheduler(cfg, optimizer)
    if s.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    return WarmupPolyLR(optimizer, s.MAX_ITER, warmup_factor=s.WARMUP_FACTOR,
                        warmup_iters=s.WARMUP_ITERS, warmup_method=s.WARMUP_METHOD,
                        power=s.POLY_LR_POWER, constant_ending=s.POLY_LR_CONSTANT_ENDING)
