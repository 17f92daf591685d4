"""DINOv3 ViT weights (transformers' files) in EoMT's ViT, and the official delta weights.

transformers stores a DINOv3 ViT (``model.safetensors`` of ``facebook/dinov3-vitl16-pretrain-lvd1689m``)
as ``embeddings.*`` (class, mask and register tokens, the patch convolution), ``layer.<i>.*``
(``model.layer.<i>.*`` when saved by transformers >= 5) and ``norm.*``; the official EoMT holds the
same tensors as ``patch_embed.*`` / ``blocks.<i>.*`` / ``norm.*`` without the mask token
(:mod:`maskformer_d2.modeling.backbone.dinov3_vit`). Nothing is resampled: DINOv3 has patch 16
and rotary positions.

The official DINOv3 EoMT checkpoints are *deltas* (``delta_weights: True`` in tue-mps/eomt's
``configs/dinov3``): the model's weights are the DINOv3 weights plus the checkpoint's for the
ViT, and zero plus the checkpoint's for every other parameter (buffers: their initial value
plus the checkpoint's); the checkpoint's ``criterion.empty_weight`` is not used.
:func:`add_delta_weights` computes that sum (:meth:`EoMT.rename_checkpoint_keys` with
``MODEL.EOMT.DELTA_WEIGHTS``); ``tools/convert-dinov3-to-d2.py`` uses :func:`dinov3_to_eomt`.
"""
import re
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

from ...checkpoint.safe_load import read_state_dict
from ...errors import CheckpointMismatchError

StateDict = Dict[str, Tensor]

__all__ = ["dinov3_to_eomt", "read_dinov3", "delta_base", "add_delta_weights"]

_RENAMES = (
    (re.compile(r"^embeddings\.mask_token$"), None),  # masked image modelling only
    (re.compile(r"^embeddings\."), "patch_embed."),
    (re.compile(r"^(?:model\.)?layer\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"^norm\."), "norm."),
)
PREFIX = "backbone.vit."


def _renamed(key: str) -> Optional[str]:
    for pattern, new in _RENAMES:
        if pattern.search(key):
            return None if new is None else PREFIX + pattern.sub(new, key, count=1)
    return key  # not a DINOv3 entry: reported below


def dinov3_to_eomt(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor], source: str) -> StateDict:
    """transformers' DINOv3 entries -> ``backbone.vit.*`` of an EoMT whose ViT entries are
    ``expected`` (name -> tensor of the right shape).

    Raises:
        CheckpointMismatchError: one line naming ``source``, what is missing, left over or of
            another shape (another DINOv3 size than ``MODEL.EOMT.BACKBONE_NAME``, or no DINOv3).
    """
    converted = {}
    for key, value in state_dict.items():
        new = _renamed(key)
        if new is not None:
            converted[new] = value
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    misfit = sorted(k for k in set(expected) & set(converted) if expected[k].shape != converted[k].shape)
    if missing or unexpected or misfit:
        shown: List[str] = [f"missing {missing[:3]}" * bool(missing), f"unexpected {unexpected[:3]}" * bool(unexpected),
                            f"shapes differ {misfit[:3]}" * bool(misfit)]
        raise CheckpointMismatchError(
            f"{source}: not the DINOv3 ViT of MODEL.EOMT.BACKBONE_NAME: " + "; ".join(s for s in shown if s))
    return {k: v.contiguous() for k, v in converted.items()}


def read_dinov3(path: str, backbone: nn.Module) -> StateDict:
    """The DINOv3 file ``path`` (``.safetensors`` or ``.pth``, read without unpickling code) as
    the ``backbone.vit.*`` entries of an EoMT whose backbone (an ``EoMTViT``) is ``backbone``."""
    expected = {PREFIX + k: v for k, v in backbone.vit.state_dict().items()}
    return dinov3_to_eomt(read_state_dict(path), expected, path)


def delta_base(model: nn.Module, vit_state: Mapping[str, Tensor]) -> StateDict:
    """What the official code adds delta weights to: ``vit_state`` for the ViT, zeros for every
    other parameter of ``model``, buffers as they are."""
    params = {name for name, _ in model.named_parameters()}
    base = {}
    for key, value in model.state_dict().items():
        if key in vit_state:
            base[key] = vit_state[key]
        elif key in params:
            base[key] = torch.zeros_like(value)
        else:
            base[key] = value
    return base


def add_delta_weights(deltas: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> StateDict:
    """``base + deltas`` entry by entry (our names). The deltas' ``criterion.empty_weight`` is
    dropped (the loss's own comes from the config); entries the model lacks or whose shape
    differs pass through unchanged, so the loader reports them by name."""
    out: Dict[str, Tensor] = {}
    for key, delta in deltas.items():
        if key.endswith("criterion.empty_weight"):
            continue
        value = base.get(key)
        if value is None or not isinstance(delta, Tensor) or value.shape != delta.shape:
            out[key] = delta
        else:
            dtype = torch.promote_types(value.dtype, delta.dtype)
            if dtype.is_floating_point:  # the official sums in the float32 model
                dtype = torch.promote_types(dtype, torch.float32)
            out[key] = value.to(dtype) + delta.to(dtype)
    return out
