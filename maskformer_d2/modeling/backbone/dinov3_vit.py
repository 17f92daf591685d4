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
"""
import json
import os
from typing import Dict, Optional, Tuple

from torch import Tensor, nn

from ...errors import MissingDependencyError

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


def dinov3_config(name: str, embed_dim: int = 0, depth: int = 0, num_heads: int = 0):
    """transformers' ``DINOv3ViTConfig`` of ``name`` (a known hub id or a local folder with a
    ``config.json``); ``embed_dim``/``depth``/``num_heads`` override it when > 0 (the MLP then
    keeps its ratio)."""
    transformers = _transformers()
    if name in DINOV3_ARCHITECTURES:
        values = dict(DINOV3_ARCHITECTURES[name])
    elif os.path.isfile(os.path.join(name, "config.json")):
        with open(os.path.join(name, "config.json"), encoding="utf-8") as f:
            values = json.load(f)
        if values.get("model_type") != "dinov3_vit":
            raise ValueError(f"MODEL.EOMT.BACKBONE_NAME={name!r}: config.json is a "
                             f"{values.get('model_type')!r} model, not a DINOv3 ViT (model_type dinov3_vit)")
    else:
        raise KeyError(f"MODEL.EOMT.BACKBONE_NAME={name!r} is neither a timm model, a DINOv3 ViT of "
                       f"{sorted(DINOV3_ARCHITECTURES)} nor a local transformers folder with a config.json")
    if embed_dim > 0:
        values["intermediate_size"] = values["intermediate_size"] * embed_dim // values["hidden_size"]
        values["hidden_size"] = embed_dim
    values.update({k: v for k, v in (("num_hidden_layers", depth), ("num_attention_heads", num_heads)) if v > 0})
    config = transformers.DINOv3ViTConfig(**{k: v for k, v in values.items()
                                             if k not in ("model_type", "architectures", "transformers_version")})
    config._attn_implementation = "sdpa"  # a boolean mask: True = may attend, as the official runs it
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
