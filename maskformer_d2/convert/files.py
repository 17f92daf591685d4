"""Reading and writing the files of the weight converters (tools/convert-*.py).

* :func:`read_state_dict`: the tensors of a ``.pth`` file (``torch.load(weights_only=True)``);
* :func:`rename_keys`: a state dict with its keys renamed by a function (keys mapped to None dropped);
* :func:`write_d2_checkpoint`: a detectron2 model-zoo style ``.pkl``;
* :func:`write_safetensors_checkpoint`: the same tensors as ``.safetensors``, which cannot hold
  code at all (the format new weights are written in: :func:`write_checkpoint` picks by suffix).
"""
import os
import pickle
from collections import OrderedDict
from typing import Callable, Dict, Optional

import torch

from ..checkpoint.atomic import write_atomically
from ..checkpoint.safe_load import read_state_dict

__all__ = [
    "StateDict",
    "read_state_dict",
    "rename_keys",
    "write_checkpoint",
    "write_d2_checkpoint",
    "write_safetensors_checkpoint",
]

StateDict = Dict[str, torch.Tensor]


def rename_keys(state_dict: StateDict, rename: Callable[[str], Optional[str]]) -> StateDict:
    """``{rename(k): v}``, leaving out the keys ``rename`` maps to None."""
    out = {}
    for key, value in state_dict.items():
        new = rename(key)
        if new is not None:
            out[new] = value
    return out


def write_d2_checkpoint(
    state_dict: Dict[str, torch.Tensor], path: str, author: str, matching_heuristics: bool
) -> None:
    """Write a detectron2 model-zoo style ``.pkl``: ``{"model": {name: ndarray}, "__author__", ...}``.

    ``matching_heuristics=True`` marks a partial (e.g. backbone-only) checkpoint whose names d2
    matches by suffix; :class:`MaskFormerCheckpointer` then lets the rest of the model stay as built.
    """
    if not path.endswith(".pkl"):
        raise ValueError(f"{path}: detectron2 checkpoints written by the tools end in .pkl")
    model = OrderedDict((k, v.detach().cpu().numpy()) for k, v in state_dict.items())
    data = {"model": model, "__author__": author, "matching_heuristics": matching_heuristics}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: pickle.dump(data, f))


def write_safetensors_checkpoint(
    state_dict: Dict[str, torch.Tensor], path: str, author: str, matching_heuristics: bool
) -> None:
    """Write the tensors as ``.safetensors``, with "__author__" and "matching_heuristics" in its
    metadata (:class:`~maskformer_d2.checkpoint.MaskFormerCheckpointer` reads them back)."""
    from safetensors.torch import save

    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: a safetensors checkpoint ends in .safetensors")
    # safetensors stores each tensor on its own: no views sharing memory
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    metadata = {"__author__": author, "matching_heuristics": str(bool(matching_heuristics))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: f.write(save(tensors, metadata=metadata)))


def write_checkpoint(state_dict: Dict[str, torch.Tensor], path: str, author: str,
                     matching_heuristics: bool) -> None:
    """:func:`write_safetensors_checkpoint` for ``.safetensors``, :func:`write_d2_checkpoint` for ``.pkl``."""
    if path.endswith(".safetensors"):
        return write_safetensors_checkpoint(state_dict, path, author, matching_heuristics)
    if path.endswith(".pkl"):
        return write_d2_checkpoint(state_dict, path, author, matching_heuristics)
    raise ValueError(f"{path}: write a .safetensors file (or a detectron2 .pkl)")
