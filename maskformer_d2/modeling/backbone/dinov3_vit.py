"""DINOv3's ViT as the official EoMT builds it: transformers' DINOv3 ViT, renamed timm's way.

The official EoMT (tue-mps/eomt, ``models/vit.py``) takes a DINOv3 encoder from transformers
(``AutoModel.from_pretrained("facebook/dinov3-vitl16-pretrain-lvd1689m")``) and renames its parts
in place so that its timm-driving code finds them: ``embeddings`` -> ``patch_embed`` (class token,
register tokens and the patch convolution; the mask token dropped), ``layer`` -> ``blocks``, with
``rope_embeddings`` and ``norm`` kept. Its checkpoints store the encoder under those names
(``network.encoder.backbone.blocks.0.attention.q_proj.weight``, ``...patch_embed.register_tokens``).
:class:`DINOv3ViT` holds transformers' own modules under the same names, so those checkpoints
load by the prefix change the timm ViTs use, and the blocks compute what the official blocks do.

Nothing is downloaded: the architecture comes from :data:`DINOV3_ARCHITECTURES` (the released
DINOv3 ViTs the official EoMT configs name) or from the ``config.json`` of a local transformers
folder; weights come from checkpoints (``MODEL.WEIGHTS``, :mod:`maskformer_d2.convert.dinov3`).
A folder's ``config.json`` is untrusted: read and checked field by field
(:mod:`maskformer_d2.checkpoint.model_json`), only its architecture fields used, and the parameter
count of what it describes bounded (counted on the meta device) before anything is allocated.
"""
import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ...checkpoint.model_json import (
    Field,
    check_fields,
    flag,
    integer,
    number,
    optional,
    read_json,
    refuse_actions,
    text,
)
from ...errors import HFImportError, MissingDependencyError

__all__ = ["DINOV3_ARCHITECTURES", "DINOv3ViT", "is_dinov3_name", "dinov3_config"]

# transformers' DINOv3ViTConfig values of the released ViTs (patch 16, 4 register tokens, RoPE
# base 100, coordinates rescaled by up to 2x in training; the rest are the config's defaults)
_COMMON = {"patch_size": 16, "num_register_tokens": 4, "rope_theta": 100.0, "pos_embed_rescale": 2.0,
           "layer_norm_eps": 1e-5, "use_gated_mlp": False}
DINOV3_ARCHITECTURES: Dict[str, Dict[str, object]] = {
    "facebook/dinov3-vits16-pretrain-lvd1689m": dict(
        _COMMON, hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6),
    "facebook/dinov3-vitb16-pretrain-lvd1689m": dict(
        _COMMON, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "facebook/dinov3-vitl16-pretrain-lvd1689m": dict(
        _COMMON, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
}


# The fields of a folder's config.json that build the ViT, with bounds generous for every released
# DINOv3 (ViT-7B: hidden 4096, FFN 8192, 40 layers, 32 heads) and small enough to refuse absurd
# values; its other fields (labels, output stages) are not used
_FOLDER_FIELDS = (
    Field("hidden_size", integer(1, 8192)),
    Field("intermediate_size", integer(1, 65536)),
    Field("num_hidden_layers", integer(1, 100)),
    Field("num_attention_heads", integer(1, 256)),
    Field("patch_size", integer(1, 256)),
    Field("num_register_tokens", integer(0, 256)),
    Field("num_channels", integer(1, 16)),
    Field("image_size", integer(1, 16384)),
    Field("hidden_act", text()),
    Field("attention_dropout", number(0, 1)),
    Field("drop_path_rate", number(0, 1)),
    Field("initializer_range", number(0, 1e3)),
    Field("layer_norm_eps", number(0, 1, above=True)),
    Field("layerscale_value", number(-1e6, 1e6)),
    Field("rope_theta", number(0, 1e9, above=True)),
    Field("pos_embed_shift", optional(number(0, 1e3))),
    Field("pos_embed_jitter", optional(number(0, 1e3))),
    Field("pos_embed_rescale", optional(number(0, 1e3))),
    *(Field(name, flag()) for name in ("query_bias", "key_bias", "value_bias", "proj_bias", "mlp_bias",
                                       "use_gated_mlp")),
)
# parameters of a DINOv3 ViT this builds (ViT-7B has 6.7 B; ViT-L 0.3 B)
MAX_PARAMETERS = 8_000_000_000


def is_dinov3_name(name: str) -> bool:
    """Whether ``MODEL.EOMT.BACKBONE_NAME`` names a transformers DINOv3 model (a hub id, as the
    official configs write it, or a local folder) rather than a timm architecture."""
    return "/" in name or os.path.isdir(name)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"DINOv3 EoMT models need transformers ({e}); install it with `pip install transformers`") from None
    return transformers


def _folder_values(folder: str) -> Dict[str, object]:
    """The architecture fields of ``folder/config.json``, checked (:data:`_FOLDER_FIELDS`).

    Raises:
        HFImportError: one line, ``MODEL.EOMT.BACKBONE_NAME=<folder>: config.json: <what is wrong>``.
    """
    try:
        data = read_json(folder, "config.json")
        refuse_actions(data, "config.json")
        if data.get("model_type") != "dinov3_vit":
            raise HFImportError(f"config.json: model_type: {data.get('model_type')!r}, not a DINOv3 ViT "
                                "('dinov3_vit')")
        check_fields(data, _FOLDER_FIELDS, "config.json")
    except HFImportError as e:
        raise HFImportError(f"MODEL.EOMT.BACKBONE_NAME={folder!r}: {e}") from None
    return {f.path: data[f.path] for f in _FOLDER_FIELDS if f.path in data}


def _check_size(name: str, config) -> None:
    """Refuse what transformers cannot build or what exceeds :data:`MAX_PARAMETERS`, counted on the
    meta device (which allocates nothing)."""
    if config.hidden_size % config.num_attention_heads:
        raise HFImportError(f"MODEL.EOMT.BACKBONE_NAME={name!r}: hidden size {config.hidden_size} is not a "
                            f"multiple of the {config.num_attention_heads} attention heads")
    with torch.device("meta"):
        skeleton = _transformers().DINOv3ViTModel(config)
    count = sum(p.numel() for p in skeleton.parameters())
    if count > MAX_PARAMETERS:
        raise HFImportError(f"MODEL.EOMT.BACKBONE_NAME={name!r}: the ViT would have {count / 1e9:.1f} B parameters, "
                            f"more than the {MAX_PARAMETERS / 1e9:g} B of the largest DINOv3")


def dinov3_config(name: str, embed_dim: int = 0, depth: int = 0, num_heads: int = 0):
    """transformers' ``DINOv3ViTConfig`` of ``name`` (a known hub id or a local folder with a
    ``config.json``); ``embed_dim``/``depth``/``num_heads`` override it when > 0 (the MLP then
    keeps its ratio).

    Raises:
        HFImportError: the folder's ``config.json`` is unreadable, of another model or out of
            bounds, or the ViT would be larger than :data:`MAX_PARAMETERS` (one line).
        KeyError: ``name`` is neither a known DINOv3 nor a folder with a ``config.json``.
    """
    transformers = _transformers()
    if name in DINOV3_ARCHITECTURES:
        values = dict(DINOV3_ARCHITECTURES[name])
    elif os.path.isfile(os.path.join(name, "config.json")):
        values = _folder_values(name)
    else:
        raise KeyError(f"MODEL.EOMT.BACKBONE_NAME={name!r} is neither a timm model, a DINOv3 ViT of "
                       f"{sorted(DINOV3_ARCHITECTURES)} nor a local transformers folder with a config.json")
    if embed_dim > 0:
        default = transformers.DINOv3ViTConfig()  # what a folder's config leaves out
        ffn, dim = (values.get(k, getattr(default, k)) for k in ("intermediate_size", "hidden_size"))
        values["intermediate_size"] = ffn * embed_dim // dim
        values["hidden_size"] = embed_dim
    values.update({k: v for k, v in (("num_hidden_layers", depth), ("num_attention_heads", num_heads)) if v > 0})
    config = transformers.DINOv3ViTConfig(**values)
    config._attn_implementation = "sdpa"  # a boolean mask: True = may attend, as the official runs it
    _check_size(name, config)
    return config


class DINOv3ViT(nn.Module):
    """transformers' DINOv3 ViT parts under the official EoMT's names (module docstring).

    Tokens: class, ``num_register_tokens`` registers, then the patches; RoPE rotates the queries
    and keys of the last ``h*w`` tokens only, so tokens put in front (EoMT's queries) are not
    rotated.
    """

    def __init__(self, config):
        super().__init__()
        transformers = _transformers()
        model = transformers.DINOv3ViTModel(config)  # randomly initialised as transformers does
        self.patch_embed = model.embeddings
        del self.patch_embed.mask_token  # masked image modelling only; not in official checkpoints
        self.rope_embeddings = model.rope_embeddings
        # transformers < 5 keeps the layers at the top, >= 5 in an encoder module
        self.blocks = model.layer if hasattr(model, "layer") else model.model.layer
        self.norm = model.norm
        self.embed_dim: int = config.hidden_size
        self.patch_size: int = config.patch_size
        self.num_prefix_tokens: int = 1 + config.num_register_tokens

    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, prefix + H/p * W/p, C): class and register tokens, then patches."""
        return self.patch_embed(images)

    def position_embeddings(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(cos, sin), each (H/p * W/p, head_dim), of the patch grid of ``images``; in training
        the coordinates are randomly rescaled (``pos_embed_rescale``), as in the official runs."""
        return self.rope_embeddings(images)

    @staticmethod
    def run_block(block: nn.Module, x: Tensor, attn_mask: Optional[Tensor],
                  rope: Optional[Tuple[Tensor, Tensor]]) -> Tensor:
        """One block on (B, N, C) tokens; ``attn_mask`` (B, 1, N, N) bool, True = may attend."""
        return block(x, attention_mask=attn_mask, position_embeddings=rope)
