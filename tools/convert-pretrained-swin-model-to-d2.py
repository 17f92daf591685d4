#!/usr/bin/env python
"""Convert an official Swin Transformer ImageNet checkpoint (.pth) into a detectron2 .pkl.

    python tools/convert-pretrained-swin-model-to-d2.py swin_tiny_patch4_window7_224.pth swin_tiny_patch4_window7_224.pkl

The input is a file of github.com/microsoft/Swin-Transformer (``{"model": state_dict}``). The output
holds the backbone tensors under ``backbone.`` (the names of ``D2SwinTransformer`` in MaskFormer),
without the classifier (``head.*``), the classifier's final ``norm.*`` and the ``attn_mask`` buffers
(D2SwinTransformer builds its shifted-window masks per input size). It is marked
``"matching_heuristics": True``: the per-stage output norms (``backbone.norm0``..``norm3``) and the
heads stay as initialised, as in the official MaskFormer training.
"""
import re
import sys
from typing import Optional

from _backbone_conversion import StateDict, main, rename_keys

_DROPPED = re.compile(r"(^head\.|^norm\.|\.attn_mask$)")


def rename_key(key: str) -> Optional[str]:
    """MaskFormer name of an official Swin key, or None for classifier-only tensors."""
    if _DROPPED.search(key):
        return None
    return "backbone." + key


def convert(state_dict: StateDict) -> StateDict:
    """Official Swin ImageNet state dict -> ``backbone.*`` tensors of D2SwinTransformer."""
    if "patch_embed.proj.weight" not in state_dict:
        raise ValueError("not an official Swin Transformer state dict (no 'patch_embed.proj.weight')")
    return rename_keys(state_dict, rename_key)


if __name__ == "__main__":
    sys.exit(main(None, __doc__, convert, author="third_party",
                  input_help="official Swin .pth ({'model': state_dict})"))
