"""The plain ViT of EoMT (DINOv2-style: patch 16, register tokens, layer scale) as a d2 backbone.

A timm ``VisionTransformer`` underneath for DINOv2: the official EoMT builds that encoder with
``timm.create_model`` and its checkpoints store the ViT under timm's names
(``network.encoder.backbone.blocks.0.attn.qkv.weight``, ``...reg_token``, ``...pos_embed``), so
official weights load into it by a prefix change only, and any timm ViT architecture name works.
For DINOv3 (a ``MODEL.EOMT.BACKBONE_NAME`` like ``facebook/dinov3-vitl16-pretrain-lvd1689m``,
as the official configs name it) it is transformers' DINOv3 ViT with rotary position
embeddings, laid out as the official code lays it out (:mod:`.dinov3_vit`).

EoMT does not call :meth:`forward`: it inserts its queries between the blocks, so it drives
:meth:`position_embeddings`, :meth:`embed`, :attr:`blocks` (through :meth:`run_block`) and
:attr:`norm` itself. :meth:`forward` is the plain backbone (normalised patch features), for
other heads.
"""
from typing import Dict, Optional, Sequence, Tuple

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import Tensor, nn

from ...errors import MissingDependencyError
from .dinov3_vit import DINOv3ViT, dinov3_config, is_dinov3_name

__all__ = ["EoMTViT", "create_timm_vit"]


def create_timm_vit(name: str, img_size: Sequence[int], patch_size: int, embed_dim: int = 0,
                    depth: int = 0, num_heads: int = 0) -> nn.Module:
    """A randomly initialised timm ViT ``name`` for (H, W) = ``img_size`` inputs, without its
    classifier; ``embed_dim``/``depth``/``num_heads`` override the architecture's when > 0."""
    try:
        import timm
    except ImportError as e:
        raise MissingDependencyError(
            f"EoMT's ViT backbone needs timm ({e}); install it with `pip install timm`") from None
    overrides = {k: v for k, v in (("embed_dim", embed_dim), ("depth", depth),
                                   ("num_heads", num_heads)) if v > 0}
    try:
        return timm.create_model(name, pretrained=False, img_size=tuple(img_size),
                                 patch_size=patch_size, num_classes=0, **overrides)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise KeyError(f"MODEL.EOMT.BACKBONE_NAME={name!r} is not a timm model "
                           "(e.g. vit_large_patch14_reg4_dinov2)") from None
        raise


@BACKBONE_REGISTRY.register()
class EoMTViT(Backbone):
    """A timm ViT (or transformers' DINOv3 ViT) for a fixed input size (``MODEL.EOMT.*``).

    Input: (B, 3, H, W) normalised images of exactly ``img_size``. Output of :meth:`forward`:
    {"vit": (B, C, H / p, W / p)} patch tokens after the final norm.
    """

    @configurable
    def __init__(self, *, name: str, img_size: Sequence[int], patch_size: int,
                 embed_dim: int = 0, depth: int = 0, num_heads: int = 0):
        """
        Args:
            name: timm architecture, e.g. "vit_large_patch14_reg4_dinov2", or a DINOv3 ViT:
                "facebook/dinov3-vitl16-pretrain-lvd1689m" or a local transformers folder.
            img_size: (H, W) of every input; the position embeddings cover its patch grid.
            patch_size: p; H and W must be multiples of it.
            embed_dim, depth, num_heads: override the architecture's when > 0.
        """
        super().__init__()
        h, w = img_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"MODEL.EOMT.IMG_SIZE {list(img_size)} is not a multiple of "
                             f"MODEL.EOMT.PATCH_SIZE {patch_size}")
        if is_dinov3_name(name):
            self.vit = DINOv3ViT(dinov3_config(name, embed_dim, depth, num_heads))
            if self.vit.patch_size != patch_size:
                raise ValueError(f"MODEL.EOMT.PATCH_SIZE {patch_size} differs from {name}'s patch size "
                                 f"{self.vit.patch_size} (DINOv3 is not resampled)")
        else:
            self.vit = create_timm_vit(name, img_size, patch_size, embed_dim, depth, num_heads)
        self.img_size: Tuple[int, int] = (h, w)
        self.name = name
        self.patch_size = patch_size

    @classmethod
    def from_config(cls, cfg, input_shape=None) -> dict:
        e = cfg.MODEL.EOMT
        return {"name": e.BACKBONE_NAME, "img_size": tuple(e.IMG_SIZE), "patch_size": e.PATCH_SIZE,
                "embed_dim": e.EMBED_DIM, "depth": e.DEPTH, "num_heads": e.NUM_HEADS}

    # ---- what EoMT drives
    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def blocks(self) -> nn.Module:
        """The L transformer blocks (run each with :meth:`run_block`)."""
        return self.vit.blocks

    @property
    def norm(self) -> nn.Module:
        """The final LayerNorm over tokens."""
        return self.vit.norm

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens before the patch tokens (1 + 4 for DINOv2 with registers)."""
        return self.vit.num_prefix_tokens

    @property
    def grid_size(self) -> Tuple[int, int]:
        """(H / p, W / p), the patch grid."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def rotary(self) -> bool:
        """Whether positions enter each block as rotary embeddings (DINOv3) rather than once, added
        to the patch embeddings (timm's DINOv2)."""
        return isinstance(self.vit, DINOv3ViT)

    def position_embeddings(self, images: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """The rotary embeddings every block takes (DINOv3), or None. Called before :meth:`embed`,
        as the official code calls it: in training it draws random numbers."""
        return self.vit.position_embeddings(images) if self.rotary else None

    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, prefix + H/p * W/p, C) tokens: patch embedding, position embedding
        (timm), then the class and register tokens in front."""
        if self.rotary:
            return self.vit.embed(images)
        x = self.vit._pos_embed(self.vit.patch_embed(images))
        return self.vit.norm_pre(x)

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Optional[Tensor] = None,
                  rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """One of :attr:`blocks` on (B, N, C) tokens; ``attn_mask`` (B, 1, N, N) bool, True = may
        attend; ``rope`` from :meth:`position_embeddings`."""
        if self.rotary:
            return self.vit.run_block(block, x, attn_mask, rope)
        return block(x, attn_mask=attn_mask)

    def patch_features(self, tokens: Tensor) -> Tensor:
        """(B, N, C) tokens ending with the patch tokens -> (B, C, H/p, W/p)."""
        patches = tokens[:, tokens.shape[1] - self.grid_size[0] * self.grid_size[1]:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *self.grid_size)

    # ---- a plain d2 backbone
    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        rope = self.position_embeddings(images)
        x = self.embed(images)
        for block in self.blocks:
            x = self.run_block(block, x, rope=rope)
        return {"vit": self.patch_features(self.norm(x))}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {"vit": ShapeSpec(channels=self.embed_dim, stride=self.patch_size)}

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.patch_size}

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, patch_size={self.patch_size}"
