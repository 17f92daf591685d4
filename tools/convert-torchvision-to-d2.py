#!/usr/bin/env python
"""Convert a torchvision ResNet state dict (.pth) into a detectron2 backbone checkpoint (.pkl).

    python tools/convert-torchvision-to-d2.py resnet50-0676ba61.pth R-50.pkl

The output uses detectron2's ResNet names (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``)
and is marked ``"__author__": "torchvision", "matching_heuristics": True``, so ``MODEL.WEIGHTS R-50.pkl``
loads it into the backbone of any model (the heads stay as initialised). Use it with
``MODEL.RESNETS.STRIDE_IN_1X1 False`` (torchvision strides in the 3x3 conv) and
``MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]``, ``PIXEL_STD [58.395, 57.120, 57.375]``, RGB input.
"""
import re
import sys
from typing import Optional

from _backbone_conversion import StateDict, main, rename_keys

# torchvision name piece -> detectron2 name piece, applied in this order
_RENAMES = [
    (re.compile(r"^conv1\."), "stem.conv1."),
    (re.compile(r"^bn1\."), "stem.conv1.norm."),
    (re.compile(r"^layer(\d)\."), lambda m: f"res{int(m.group(1)) + 1}."),
    (re.compile(r"\.downsample\.0\."), ".shortcut."),
    (re.compile(r"\.downsample\.1\."), ".shortcut.norm."),
    (re.compile(r"\.bn(\d)\."), lambda m: f".conv{m.group(1)}.norm."),
]
_DROPPED = re.compile(r"(^fc\.|num_batches_tracked$)")  # classifier; BN step counter (FrozenBN has none)


def rename_key(key: str) -> Optional[str]:
    """detectron2 name of a torchvision ResNet key, or None for keys d2 has no place for."""
    if _DROPPED.search(key):
        return None
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def convert(state_dict: StateDict) -> StateDict:
    """Rename a torchvision ResNet state dict to detectron2's ResNet names (dropping ``fc``)."""
    if not any(k.startswith("layer1.") for k in state_dict):
        raise ValueError("not a torchvision ResNet state dict (no 'layer1.*' keys)")
    return rename_keys(state_dict, rename_key)


if __name__ == "__main__":
    sys.exit(main(None, __doc__, convert, author="torchvision", input_help="torchvision ResNet .pth (a state dict)"))
