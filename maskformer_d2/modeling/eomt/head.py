"""EoMT's prediction head: learned queries, a linear class head and mask logits as
``MLP(query) · upscaled patch features``.

The head owns no transformer: the queries are processed by the last blocks of the ViT together
with the patch tokens (see :mod:`.meta_arch`). From the (normalised) tokens it predicts

* class logits: ``class_embed(query)``, (B, Q, K+1);
* mask logits: ``einsum(mask_embed(query), upscale(patches))``, (B, Q, 4h, 4w) for a patch grid
  of h x w with patch size 16 (``log2(p) - 2`` ×2 upscaling blocks: stride 4 like Mask2Former).
"""
import math
from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = ["EoMTHead", "ScaleBlock", "LayerNorm2d", "num_upscale_blocks"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ScaleBlock(nn.Module):
    """×2 upscaling: 2x2 transposed conv (stride 2), GELU, depthwise 3x3 conv, LayerNorm2d."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, 2h, 2w)."""
        return self.norm(self.conv2(self.act(self.conv1(x))))


def num_upscale_blocks(patch_size: int) -> int:
    """How many ×2 blocks bring a patch grid to stride 4 (at least one)."""
    return max(1, int(math.log2(patch_size)) - 2)


class EoMTHead(nn.Module):
    """Queries and the class / mask predictions made from them (see the module docstring)."""

    def __init__(self, embed_dim: int, num_classes: int, num_queries: int, patch_size: int):
        """
        Args:
            embed_dim: C, the ViT's token width.
            num_classes: K, without "no object".
            num_queries: Q.
            patch_size: the ViT's patch size (sets the number of upscaling blocks).
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.query_embed = nn.Embedding(num_queries, embed_dim)
        self.class_embed = nn.Linear(embed_dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.GELU(),
            nn.Linear(embed_dim, embed_dim), nn.GELU(),
            nn.Linear(embed_dim, embed_dim),
        )
        self.upscale = nn.Sequential(*[ScaleBlock(embed_dim) for _ in range(num_upscale_blocks(patch_size))])

    def queries(self, batch_size: int) -> Tensor:
        """(B, Q, C) the learned queries, to put in front of the tokens."""
        return self.query_embed.weight[None].expand(batch_size, -1, -1)

    def forward(self, queries: Tensor, patch_features: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            queries: (B, Q, C) normalised query tokens.
            patch_features: (B, C, h, w) normalised patch tokens.

        Returns:
            class logits (B, Q, K+1) and mask logits (B, Q, h * s, w * s), s = 2 ** upscale blocks.
        """
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), self.upscale(patch_features))
        return self.class_embed(queries), masks
