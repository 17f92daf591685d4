"""DINOv2 (and DINOv3) ViT weights -> the backbone checkpoint an EoMT fine-tuning starts from.

The official EoMT starts training from DINOv2 through timm
(``timm.create_model(name, pretrained=True, img_size=..., patch_size=16)``): timm's loader takes
the released weights (timm's hub file of the architecture, ``model.safetensors``), resamples the
patch-14 embedding kernel to the model's patch size and the position embedding to its patch
grid. :func:`convert_dinov2` applies the same timm filter to a local file (nothing is
downloaded) for the ViT of an EoMT config, and the tool writes the result as a backbone-only
checkpoint (``backbone.vit.*``, ``matching_heuristics``): ``MODEL.WEIGHTS`` then initialises the
ViT and leaves the queries and heads as built, as the official code does. For a DINOv3 config
(``configs/eomt/dinov3``) the input is transformers' DINOv3 file, renamed by
:mod:`maskformer_d2.modeling.eomt.dinov3_weights` (nothing to resample).
"""
import argparse
import sys
from typing import List, Optional, Sequence

from ..errors import CheckpointReadError, first_line
from ..modeling.backbone.dinov3_vit import is_dinov3_name
from .files import StateDict, read_state_dict, write_checkpoint

__all__ = ["convert_dinov2", "main"]


def convert_dinov2(state_dict: StateDict, name: str, img_size: Sequence[int], patch_size: int,
                   embed_dim: int = 0, depth: int = 0, num_heads: int = 0) -> StateDict:
    """DINOv2 tensors -> ``backbone.vit.*`` of :class:`~maskformer_d2.modeling.backbone.EoMTViT`
    for the timm architecture ``name`` at ``img_size`` / ``patch_size`` (the ``MODEL.EOMT.*``
    values), by timm's own ``checkpoint_filter_fn``.

    Raises:
        ValueError: the file is not a ViT of that architecture (names which tensors do not fit).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    from ..modeling.backbone.eomt_vit import create_timm_vit
    vit = create_timm_vit(name, img_size, patch_size, embed_dim, depth, num_heads)
    if not any(k.endswith("patch_embed.proj.weight") for k in state_dict):
        raise ValueError("not a ViT state dict (no 'patch_embed.proj.weight')")
    try:
        filtered = checkpoint_filter_fn(dict(state_dict), vit)
    except (RuntimeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"not a {name} state dict ({type(e).__name__}: {first_line(e)[:160]})") from None
    expected = vit.state_dict()
    filtered = {k: v for k, v in filtered.items() if not k.startswith("head.")}  # a classifier, if any
    missing = sorted(set(expected) - set(filtered))
    unexpected = sorted(set(filtered) - set(expected))
    misfit = sorted(k for k in set(expected) & set(filtered) if expected[k].shape != filtered[k].shape)
    if missing or unexpected or misfit:
        shown = [f"missing {missing[:3]}" * bool(missing), f"unexpected {unexpected[:3]}" * bool(unexpected),
                 f"shapes differ {misfit[:3]}" * bool(misfit)]
        raise ValueError(f"not a {name} state dict: " + "; ".join(s for s in shown if s)
                         + " (is MODEL.EOMT.BACKBONE_NAME the file's architecture?)")
    return {"backbone.vit." + k: v.contiguous() for k, v in filtered.items()}


def main(argv: Optional[List[str]] = None, doc: str = __doc__) -> int:
    """``INPUT OUTPUT --config-file CFG [--opts ...]``: one error line and status 1 on failure."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="DINOv2 weights with timm's names: the hub's model.safetensors (or a .pth); "
                    "for a DINOv3 config, transformers' DINOv3 model.safetensors")
    ap.add_argument("output", help="checkpoint to write: .safetensors (or a detectron2 .pkl)")
    ap.add_argument("--config-file", required=True, metavar="FILE",
                    help="the EoMT config to fine-tune (its MODEL.EOMT.BACKBONE_NAME / IMG_SIZE / PATCH_SIZE)")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE")
    args = ap.parse_args(argv)
    try:
        from ..config import load_config
        e = load_config(args.config_file, args.opts, opts_name="--opts").MODEL.EOMT
        dinov3 = is_dinov3_name(e.BACKBONE_NAME)
        if dinov3:  # transformers' DINOv3: renamed only
            from ..modeling.backbone.eomt_vit import EoMTViT
            from ..modeling.eomt.dinov3_weights import read_dinov3
            vit = EoMTViT(name=e.BACKBONE_NAME, img_size=e.IMG_SIZE, patch_size=e.PATCH_SIZE,
                          embed_dim=e.EMBED_DIM, depth=e.DEPTH, num_heads=e.NUM_HEADS)
            converted = read_dinov3(args.input, vit)
        else:
            converted = convert_dinov2(read_state_dict(args.input), e.BACKBONE_NAME, e.IMG_SIZE, e.PATCH_SIZE,
                                       e.EMBED_DIM, e.DEPTH, e.NUM_HEADS)
        write_checkpoint(converted, args.output, author="DINOv3" if dinov3 else "DINOv2", matching_heuristics=True)
    except (OSError, CheckpointReadError, ValueError, KeyError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {len(converted)} tensors for {e.BACKBONE_NAME} at "
          f"{e.IMG_SIZE[0]}x{e.IMG_SIZE[1]}, patch {e.PATCH_SIZE}")
    return 0
