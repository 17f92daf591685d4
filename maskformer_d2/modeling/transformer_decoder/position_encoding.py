"""Sine position encoding of a 2-D feature map (DETR's ``PositionEmbeddingSine``)."""
import math
from typing import Optional

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """The "Attention is all you need" sine/cosine encoding, applied to rows and columns.

    Half of the output channels encode the row (y) position, half the column (x) position;
    within each half, even channels are sines and odd channels cosines of the position divided by
    ``temperature ** (2 * (i // 2) / num_pos_feats)``.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels.
        temperature: base of the geometric progression of wavelengths.
        normalize: rescale positions to ``(0, scale]`` over the valid (non-padded) extent.
        scale: the range of normalised positions (default 2π); needs ``normalize=True``.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000,
        normalize: bool = False,
        scale: Optional[float] = None,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `scale` is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (B, C, H, W); only its batch size, spatial size and device are used.
            mask: (B, H, W) bool, True at padded pixels; None means no padding.

        Returns:
            (B, 2 * num_pos_feats, H, W) float32 position encoding.
        """
        if mask is None:
            mask = torch.zeros((x.shape[0], x.shape[2], x.shape[3]), dtype=torch.bool, device=x.device)
        valid = ~mask
        # 1-based positions counted over valid pixels only
        y_pos = valid.cumsum(1, dtype=torch.float32)
        x_pos = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_pos = y_pos / (y_pos[:, -1:, :] + eps) * self.scale
            x_pos = x_pos / (x_pos[:, :, -1:] + eps) * self.scale

        freq = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        freq = self.temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = _interleave_sin_cos(y_pos[:, :, :, None] / freq)
        pos_x = _interleave_sin_cos(x_pos[:, :, :, None] / freq)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """(..., D) angles -> (..., D): sin of the even entries and cos of the odd ones, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
