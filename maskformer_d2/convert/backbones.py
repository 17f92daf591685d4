"""ImageNet backbone checkpoints -> detectron2 backbone ``.pkl`` files.

* :func:`convert_torchvision_resnet`: a torchvision ResNet state dict -> detectron2's ResNet names
  (tools/convert-torchvision-to-d2.py);
* :func:`convert_swin`: an official Swin Transformer state dict -> ``backbone.*`` of
  ``D2SwinTransformer`` (tools/convert-pretrained-swin-model-to-d2.py);
* :func:`main`: the command line both tools share: rename the tensors of an ImageNet checkpoint and
  write them as a detectron2 backbone .pkl.
"""
import argparse
import re
import sys
from typing import Callable, List, Optional

from ..errors import CheckpointReadError
from .files import StateDict, read_state_dict, rename_keys, write_checkpoint

__all__ = [
    "convert_torchvision_resnet",
    "convert_swin",
    "rename_torchvision_resnet_key",
    "rename_swin_key",
    "main",
]

# ----------------------------------------------------------------------------- torchvision ResNet
# torchvision name piece -> detectron2 name piece, applied in this order
_TORCHVISION_RENAMES = [
    (re.compile(r"^conv1\."), "stem.conv1."),
    (re.compile(r"^bn1\."), "stem.conv1.norm."),
    (re.compile(r"^layer(\d)\."), lambda m: f"res{int(m.group(1)) + 1}."),
    (re.compile(r"\.downsample\.0\."), ".shortcut."),
    (re.compile(r"\.downsample\.1\."), ".shortcut.norm."),
    (re.compile(r"\.bn(\d)\."), lambda m: f".conv{m.group(1)}.norm."),
]
_TORCHVISION_DROPPED = re.compile(r"(^fc\.|num_batches_tracked$)")  # classifier; BN step counter (FrozenBN has none)


def rename_torchvision_resnet_key(key: str) -> Optional[str]:
    """detectron2 name of a torchvision ResNet key, or None for keys d2 has no place for."""
    if _TORCHVISION_DROPPED.search(key):
        return None
    for pattern, repl in _TORCHVISION_RENAMES:
        key = pattern.sub(repl, key)
    return key


def convert_torchvision_resnet(state_dict: StateDict) -> StateDict:
    """Rename a torchvision ResNet state dict to detectron2's ResNet names (dropping ``fc``)."""
    if not any(k.startswith("layer1.") for k in state_dict):
        raise ValueError("not a torchvision ResNet state dict (no 'layer1.*' keys)")
    return rename_keys(state_dict, rename_torchvision_resnet_key)


# ----------------------------------------------------------------------------- official Swin
_SWIN_DROPPED = re.compile(r"(^head\.|^norm\.|\.attn_mask$)")


def rename_swin_key(key: str) -> Optional[str]:
    """MaskFormer name of an official Swin key, or None for classifier-only tensors."""
    if _SWIN_DROPPED.search(key):
        return None
    return "backbone." + key


def convert_swin(state_dict: StateDict) -> StateDict:
    """Official Swin ImageNet state dict -> ``backbone.*`` tensors of D2SwinTransformer."""
    if "patch_embed.proj.weight" not in state_dict:
        raise ValueError("not an official Swin Transformer state dict (no 'patch_embed.proj.weight')")
    return rename_keys(state_dict, rename_swin_key)


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[List[str]], doc: str, convert: Callable[[StateDict], StateDict], author: str,
         input_help: str) -> int:
    """The command line of a converter: INPUT .pth -> OUTPUT .pkl (detectron2 model-zoo format) or
    .safetensors; one error line and status 1 on failure."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help=input_help)
    ap.add_argument("output", help="checkpoint to write: .pkl (detectron2 model-zoo format) or .safetensors")
    args = ap.parse_args(argv)
    try:
        converted = convert(read_state_dict(args.input))
        write_checkpoint(converted, args.output, author=author, matching_heuristics=True)
    except (OSError, CheckpointReadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {len(converted)} tensors")
    return 0
