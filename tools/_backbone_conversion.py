"""What tools/convert-torchvision-to-d2.py and convert-pretrained-swin-model-to-d2.py share:
rename the tensors of an ImageNet checkpoint and write them as a detectron2 backbone .pkl."""
import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from maskformer_d2.checkpoint import CheckpointReadError, read_state_dict, write_d2_checkpoint  # noqa: E402

StateDict = Dict[str, torch.Tensor]


def rename_keys(state_dict: StateDict, rename: Callable[[str], Optional[str]]) -> StateDict:
    """``{rename(k): v}``, leaving out the keys ``rename`` maps to None."""
    out = {}
    for key, value in state_dict.items():
        new = rename(key)
        if new is not None:
            out[new] = value
    return out


def main(argv: Optional[List[str]], doc: str, convert: Callable[[StateDict], StateDict], author: str,
         input_help: str) -> int:
    """The command line of a converter: INPUT .pth -> OUTPUT .pkl; one error line and status 1 on failure."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help=input_help)
    ap.add_argument("output", help="detectron2 .pkl to write")
    args = ap.parse_args(argv)
    try:
        converted = convert(read_state_dict(args.input))
        write_d2_checkpoint(converted, args.output, author=author, matching_heuristics=True)
    except (OSError, CheckpointReadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {len(converted)} tensors")
    return 0
