"""Swin Transformer backbone (Liu et al., ICCV 2021) for detectron2, as MaskFormer uses it.

Registered in detectron2's ``BACKBONE_REGISTRY`` as ``D2SwinTransformer`` (the name official
MaskFormer YAMLs use) and built from ``cfg.MODEL.SWIN.*``. Parameter and buffer names equal the
official implementation's, so official checkpoints (``backbone.*`` entries) load strictly, and the
computation is the same: windows are padded to multiples of the window size *without* masking the
padded tokens, shifted windows use a cyclic shift with an attention mask computed for the
padded size (-inf across regions where the official code adds -100: the same outputs in float32,
see ``_CROSS_REGION_MASK_VALUE``), and every stage output goes through its own LayerNorm ``norm{i}``.

Token layout: inside a stage features travel as ``(B, H*W, C)`` tokens in row-major order; stage
outputs are returned as ``(B, C, H, W)`` maps named ``res2`` .. ``res5`` (strides 4 .. 32).
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import Tensor, nn

__all__ = [
    "D2SwinTransformer",
    "window_partition",
    "window_reverse",
    "relative_position_index",
    "shifted_window_attention_mask",
    "drop_path",
]

# Additive mask value for token pairs from different regions of a shifted window. The official
# implementation uses -100. After the softmax a -100 pair weighs e^(d - 100) of the row's largest
# weight (d: how far its logit exceeds the row's largest in-region logit), so unless d > 12.7 the
# weight is a float32 subnormal, and unless d > ~83 it is too small to change any float32 sum it
# enters: -inf gives the same outputs. Subnormal weights, however, make each masked attn @ v
# many times slower on x86 CPUs, which handle subnormal arithmetic in microcode (measured in
# docs/performance.md).
_CROSS_REGION_MASK_VALUE = float("-inf")


# --------------------------------------------------------------------------- pure helpers
def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a feature map into non-overlapping windows.

    Args:
        x: (B, H, W, C) with H and W multiples of ``window_size``.
    Returns:
        (B * H/ws * W/ws, ws, ws, C) windows, ordered image-major, then window row, then column.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: (B * H/ws * W/ws, ws, ws, C).
    Returns:
        (B, H, W, C).
    """
    num_windows = (height // window_size) * (width // window_size)
    b = windows.shape[0] // num_windows
    x = windows.view(b, height // window_size, width // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, height, width, -1)


def relative_position_index(window_size: Tuple[int, int]) -> Tensor:
    """Index into the relative position bias table for every (query, key) pair of a window.

    Args:
        window_size: (Wh, Ww).
    Returns:
        int64 (Wh*Ww, Wh*Ww); entry [i, j] = (dy + Wh - 1) * (2*Ww - 1) + (dx + Ww - 1), where
        (dy, dx) = position of token i minus position of token j.
    """
    wh, ww = window_size
    grid = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (2, Wh*Ww)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def shifted_window_attention_mask(
    padded_height: int, padded_width: int, window_size: int, shift_size: int, device=None
) -> Tensor:
    """Attention mask of shifted-window attention for a padded feature map.

    After the cyclic shift, a window at the bottom/right border holds tokens that were not
    neighbours in the image; tokens may only attend to tokens of their own region.

    Args:
        padded_height, padded_width: feature size after padding to multiples of ``window_size``.
    Returns:
        float (num_windows, ws*ws, ws*ws): 0 within a region, -inf across regions.
    """
    region = torch.zeros((1, padded_height, padded_width, 1), device=device)
    bands = (
        slice(0, -window_size),
        slice(-window_size, -shift_size),
        slice(-shift_size, None),
    )
    label = 0
    for rows in bands:
        for cols in bands:
            region[:, rows, cols, :] = label
            label += 1
    region_windows = window_partition(region, window_size).view(-1, window_size * window_size)
    diff = region_windows.unsqueeze(1) - region_windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, _CROSS_REGION_MASK_VALUE).masked_fill(diff == 0, 0.0)


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero the whole residual branch of random samples, rescale the others.

    Args:
        x: (B, ...) residual branch output.
    Returns:
        x itself when not training or ``drop_prob`` is 0, else x * keep / (1 - drop_prob) with
        keep ~ Bernoulli(1 - drop_prob) drawn once per sample.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        keep.div_(keep_prob)
    return x * keep


# --------------------------------------------------------------------------- modules
class DropPath(nn.Module):
    """Module form of :func:`drop_path` (no parameters)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Feed-forward block of a Swin block: fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    ``relative_position_index`` is a persistent buffer because official checkpoints contain it.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"Swin attention: channels {dim} not divisible by {num_heads} heads; "
                "check MODEL.SWIN.EMBED_DIM and MODEL.SWIN.NUM_HEADS"
            )
        self.dim = dim
        self.window_size = (window_size, window_size)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5

        num_offsets = (2 * window_size - 1) * (2 * window_size - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """(num_heads, N, N) bias added to the attention logits, N = ws*ws."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (num_windows * B, N, C) tokens of each window, N = ws*ws.
            mask: (num_windows, N, N) additive mask (0 / -100) or None.
        Returns:
            (num_windows * B, N, C).
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (bw, heads, N, C/heads)

        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(bw // num_windows, num_windows, self.num_heads, n, n)
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))

        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, each pre-norm with a residual and stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"Swin block: shift {shift_size} must be in [0, window {window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            window_size,
            num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, height: int, width: int, attn_mask: Tensor) -> Tensor:
        """
        Args:
            x: (B, H*W, C) tokens.
            attn_mask: (num_windows, ws*ws, ws*ws) mask for the padded size, used only when
                this block shifts its windows.
        Returns:
            (B, H*W, C).
        """
        b, length, c = x.shape
        if length != height * width:
            raise ValueError(f"Swin block: got {length} tokens for a {height}x{width} map")
        ws, shift = self.window_size, self.shift_size

        y = self.norm1(x).view(b, height, width, c)
        # padded tokens (zeros after the norm) take part in attention, as in the official model
        pad_r = (ws - width % ws) % ws
        pad_b = (ws - height % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = y.shape[1], y.shape[2]

        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask=attn_mask if shift > 0 else None)
        y = window_reverse(windows.view(-1, ws, ws, c), ws, hp, wp)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :height, :width, :].reshape(b, height * width, c)

        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: concat (4C), LayerNorm, linear to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """
        Args:
            x: (B, H*W, C).
        Returns:
            (B, ceil(H/2)*ceil(W/2), 2C); odd sizes are zero-padded at the bottom/right first.
        """
        b, _, c = x.shape
        x = x.view(b, height, width, c)
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # official channel order: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating plain / shifted windows, then merging."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
        **block_args,
    ):
        """
        Args:
            dim, num_heads, window_size: those of every block.
            drop_path: stochastic depth of each block; its length is the number of blocks.
            downsample: end with :class:`PatchMerging` (every stage but the last).
            use_checkpoint: recompute the blocks in backward.
            block_args: the blocks' other :class:`SwinTransformerBlock` arguments (``mlp_ratio``,
                ``qkv_bias``, ``qk_scale``, ``drop``, ``attn_drop``).
        """
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, shift_size=0 if i % 2 == 0 else self.shift_size,
                                 drop_path=rate, **block_args)
            for i, rate in enumerate(drop_path)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor, int, int]:
        """
        Args:
            x: (B, H*W, C).
        Returns:
            (stage output (B, H*W, C), input of the next stage (B, H'*W', 2C) -- the stage output
            itself when there is no merging --, H', W').
        """
        ws = self.window_size
        # integer arithmetic (not math.ceil) keeps the sizes symbolic when traced for export
        attn_mask = shifted_window_attention_mask(
            (height + ws - 1) // ws * ws, (width + ws - 1) // ws * ws, ws, self.shift_size, x.device
        )
        for blk in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(
                    blk, x, height, width, attn_mask, use_reentrant=False
                )
            else:
                x = blk(x, height, width, attn_mask)
        if self.downsample is None:
            return x, x, height, width
        return x, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> embed_dim channels (a strided conv), optional norm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, embed_dim, ceil(H/p), ceil(W/p)); zero-pads bottom/right first."""
        p = self.patch_size
        h, w = x.shape[-2:]
        if w % p:
            x = F.pad(x, (0, p - w % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        x = self.proj(x)
        if self.norm is not None:
            hh, ww = x.shape[-2:]
            x = self.norm(x.flatten(2).transpose(1, 2))
            x = x.transpose(1, 2).view(-1, self.embed_dim, hh, ww)
        return x


# --------------------------------------------------------------------------- backbone
@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """Swin Transformer as a detectron2 backbone.

    Input: (B, 3, H, W) images already normalised by the meta-architecture; H, W multiples of
    :attr:`size_divisibility` (32) give exact strides. Output: dict of the requested
    ``res2``..``res5`` maps, ``res{i+2}``: (B, embed_dim * 2**i, H / 2**(i+2), W / 2**(i+2)).
    """

    @configurable
    def __init__(
        self,
        *,
        in_chans: int = 3,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        """
        Args:
            in_chans: input image channels.
            pretrain_img_size: image size of the pre-training; sizes the absolute position
                embedding (only used when ``ape``).
            patch_size: side of the square patches of the stem (stride of ``res2``).
            embed_dim: channels of the first stage; stage i has ``embed_dim * 2**i``.
            depths, num_heads: blocks and attention heads per stage (same length).
            window_size: side of the attention windows.
            mlp_ratio: MLP hidden size / channels.
            qkv_bias: learn a bias for query, key and value.
            qk_scale: attention logit scale; None means head_dim ** -0.5.
            drop_rate, attn_drop_rate: dropout after projections / on attention weights.
            drop_path_rate: stochastic depth of the last block; rates grow linearly from 0
                over all blocks.
            ape: add a learned absolute position embedding to the patch embedding.
            patch_norm: LayerNorm after the patch embedding.
            out_features: stage outputs to return, among ``res2`` .. ``res{1+len(depths)}``.
            use_checkpoint: recompute blocks in backward (activation checkpointing) to save memory.
        """
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"Swin: MODEL.SWIN.DEPTHS {list(depths)} and MODEL.SWIN.NUM_HEADS "
                f"{list(num_heads)} must have the same length (one entry per stage)"
            )
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        stage_names = [f"res{i + 2}" for i in range(self.num_layers)]
        unknown = [name for name in out_features if name not in stage_names]
        if unknown:
            raise ValueError(
                f"Swin: MODEL.SWIN.OUT_FEATURES has {unknown}; a {self.num_layers}-stage Swin "
                f"outputs {stage_names}"
            )
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(stage_names, self.num_features))
        self._out_feature_strides = {name: patch_size * 2**i for i, name in enumerate(stage_names)}

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        # stochastic depth grows linearly over all blocks; float32 linspace values like the
        # official model (explicit CPU so building under torch.device("meta") works)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        block_args = {"mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias, "qk_scale": qk_scale, "drop": drop_rate,
                      "attn_drop": attn_drop_rate}
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            first = sum(depths[:i])
            self.layers.append(
                BasicLayer(self.num_features[i], num_heads[i], window_size, rates[first : first + depths[i]],
                           downsample=i < self.num_layers - 1, use_checkpoint=use_checkpoint, **block_args)
            )
        # one output norm per stage, all of them present (as in official checkpoints) even when
        # a stage is not among out_features
        for i, channels in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        sw = cfg.MODEL.SWIN
        return {
            "in_chans": input_shape.channels,
            "pretrain_img_size": sw.PRETRAIN_IMG_SIZE,
            "patch_size": sw.PATCH_SIZE,
            "embed_dim": sw.EMBED_DIM,
            "depths": list(sw.DEPTHS),
            "num_heads": list(sw.NUM_HEADS),
            "window_size": sw.WINDOW_SIZE,
            "mlp_ratio": sw.MLP_RATIO,
            "qkv_bias": sw.QKV_BIAS,
            "qk_scale": sw.QK_SCALE,
            "drop_rate": sw.DROP_RATE,
            "attn_drop_rate": sw.ATTN_DROP_RATE,
            "drop_path_rate": sw.DROP_PATH_RATE,
            "ape": sw.APE,
            "patch_norm": sw.PATCH_NORM,
            "out_features": list(sw.OUT_FEATURES),
            "use_checkpoint": sw.USE_CHECKPOINT,
        }

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: (B, C_in, H, W) normalised images.
        Returns:
            {name: (B, C_i, H_i, W_i)} for each name in ``out_features``.
        """
        if x.dim() != 4:
            raise ValueError(
                f"D2SwinTransformer takes (N, C, H, W) images, got shape {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        height, width = x.shape[-2:]
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=(height, width), mode="bicubic")
            x = x + pos
        x = self.pos_drop(x.flatten(2).transpose(1, 2))

        last_needed = max((int(name[3:]) - 2 for name in self._out_features), default=-1)
        outputs: Dict[str, Tensor] = {}
        for i in range(last_needed + 1):
            stage_out, x, next_h, next_w = self.layers[i](x, height, width)
            name = f"res{i + 2}"
            if name in self._out_features:
                y = getattr(self, f"norm{i}")(stage_out)
                outputs[name] = (
                    y.view(-1, height, width, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
                )
            height, width = next_h, next_w
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
