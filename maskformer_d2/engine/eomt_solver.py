"""EoMT's optimiser recipe: layer-wise LR decay of the ViT and the two-stage warm-up + poly schedule.

* Layer-wise decay (``SOLVER.LLRD``, official ``llrd``): ViT block ``i`` of ``L`` learns at
  ``LLRD ** (L - 1 - i)`` times the head's rate; what the ViT computes before its blocks (patch
  and position embeddings, class and register tokens) at ``LLRD ** (L - 1)``, what it computes after
  them (the final norm) at 1. With ``SOLVER.LLRD_L2_ENABLED`` off the query blocks (the last
  ``MODEL.EOMT.NUM_BLOCKS``) are not decayed either.
* Two-stage warm-up (``SOLVER.LR_SCHEDULER_NAME: TwoStageWarmupPolyLR``): the parts outside the
  ViT warm up linearly from 0 over ``SOLVER.WARMUP_ITERS`` and then decay as
  ``(1 - t / T) ** POLY_LR_POWER``; the ViT stays at 0 during that warm-up, warms up over
  ``SOLVER.BACKBONE_WARMUP_ITERS`` and then decays over the rest of ``SOLVER.MAX_ITER``.

The per-parameter weight decay, the backbone multiplier and gradient clipping stay those of
:mod:`.solver` (the official EoMT decays every parameter by 0.05: its configs here set
``WEIGHT_DECAY_NORM`` and ``WEIGHT_DECAY_EMBED`` to ``WEIGHT_DECAY``).
"""
import re
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from torch import nn

from ..modeling.backbone.eomt_vit import EoMTViT

__all__ = ["vit_lr_multipliers", "with_layer_decay", "TwoStageWarmupPolyLR", "build_two_stage_lr_scheduler"]


def vit_lr_multipliers(vit: nn.Module, depth: int, num_query_blocks: int, llrd: float,
                       decay_query_blocks: bool = True) -> Dict[str, float]:
    """LR multiplier of every parameter of a timm ViT (its own names, e.g. "blocks.3.attn.qkv.weight")."""
    out, seen_blocks = {}, False
    for name, _ in vit.named_parameters():
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            seen_blocks = True
            i = int(m[1])
            query_block = i >= depth - num_query_blocks
            out[name] = 1.0 if query_block and not decay_query_blocks else llrd ** (depth - 1 - i)
        else:  # before the blocks: like block 0; after them: not decayed
            out[name] = 1.0 if seen_blocks else llrd ** (depth - 1)
    return out


def with_layer_decay(model: nn.Module, cfg: CfgNode, groups: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``groups`` (:func:`~maskformer_d2.engine.solver.param_groups`) split by the layer-wise LR
    multipliers of an :class:`EoMTViT` backbone, each tagged ``"vit": True/False`` for
    :class:`TwoStageWarmupPolyLR`; unchanged for a model without one."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, EoMTViT):
        return groups
    depth = len(backbone.blocks)
    mults = vit_lr_multipliers(backbone.vit, depth, getattr(model, "num_blocks", 0), cfg.SOLVER.LLRD,
                               cfg.SOLVER.LLRD_L2_ENABLED)
    by_param = {id(p): mults[n] for n, p in backbone.vit.named_parameters()}
    split: Dict[tuple, Dict[str, Any]] = {}
    for group in groups:
        for p in group["params"]:
            vit = id(p) in by_param
            lr = group["lr"] * by_param.get(id(p), 1.0)
            key = (lr, group["weight_decay"], vit)
            split.setdefault(key, dict(group, params=[], lr=lr, vit=vit))["params"].append(p)
    return list(split.values())


class TwoStageWarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """The official two-stage warm-up + poly schedule (see the module docstring); parameter
    groups tagged ``"vit": True`` follow the ViT's stage.

    As :class:`~maskformer_d2.engine.solver.WarmupPolyLR`, a resumed run takes the schedule's
    length and warm-ups from its config; the checkpoint gives the position.
    """

    _FROM_CONFIG = ("max_iters", "warmup_iters", "backbone_warmup_iters", "power")

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_iters: int,
                 backbone_warmup_iters: int, power: float = 0.9, last_epoch: int = -1):
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.backbone_warmup_iters = backbone_warmup_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int, vit: bool) -> float:
        """The LR of a group at ``step`` relative to its base LR."""
        head_warmup, vit_warmup = self.warmup_iters, self.backbone_warmup_iters
        if not vit:
            if head_warmup > 0 and step < head_warmup:
                return step / head_warmup
            return (1 - max(0, step - head_warmup) / max(1, self.max_iters - head_warmup)) ** self.power
        if step < head_warmup:
            return 0.0
        if step < head_warmup + vit_warmup:
            return (step - head_warmup) / vit_warmup
        done = max(0, step - head_warmup - vit_warmup)
        return (1 - done / max(1, self.max_iters - head_warmup - vit_warmup)) ** self.power

    def get_lr(self) -> List[float]:
        return [base * max(0.0, self.factor(self.last_epoch, g.get("vit", False)))
                for base, g in zip(self.base_lrs, self.optimizer.param_groups)]

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self._FROM_CONFIG})


def build_two_stage_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> TwoStageWarmupPolyLR:
    s = cfg.SOLVER
    return TwoStageWarmupPolyLR(optimizer, s.MAX_ITER, s.WARMUP_ITERS, s.BACKBONE_WARMUP_ITERS,
                                s.POLY_LR_POWER)
