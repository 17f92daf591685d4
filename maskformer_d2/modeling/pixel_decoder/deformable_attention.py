"""Multi-scale deformable attention (Deformable DETR), in plain PyTorch.

Every query looks at ``n_points`` locations per head and per feature level: a reference point
plus offsets predicted from the query. The values there are read by bilinear sampling
(align_corners False, zeros outside the map, as the official pure-PyTorch path's
``grid_sample``) and averaged with attention weights predicted from the query (softmax over all
levels and points of a head). No compiled operator is needed, so it runs wherever PyTorch does.

Parameter names are those of the official module: ``sampling_offsets``, ``attention_weights``,
``value_proj``, ``output_proj``.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ..export_mode import is_exporting

__all__ = ["MSDeformAttn", "multi_scale_deformable_attention"]

# From this many sampled values (B*M*D*Lq*L*P floats) on, training recomputes them in backward
# instead of keeping them: 33M at Mask2Former R50's 512x512 crops (batch 2), where that saves
# 0.8 GB and time; 2M in the shapes recipe (128 px, batch 8), where autograd through
# grid_sample is the faster one (about 2% of a step, docs/performance.md).
_RECOMPUTE_FROM = 1 << 23


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Attention-weighted sum of bilinearly sampled values.

    Exact implementations chosen by what is faster or leaner on a CPU (measured at Mask2Former
    R50's 512x512 sizes; numbers in docs/performance.md): the forward is one ``embedding_bag``
    over the bilinear corner rows (:func:`_gathered_attention`, faster than ``grid_sample`` per
    level); with autograd and at least ``_RECOMPUTE_FROM`` sampled values,
    :class:`_RecomputedAttention` wraps it and its backward recomputes the sampled values one
    level at a time and takes ``grid_sample``'s backward (faster than ``embedding_bag``'s), so
    nothing of size (B*M, D, Lq, L*P) is kept for backward; below that, autograd through
    ``grid_sample`` per level (:func:`_sampled_attention`). Exported
    graphs take ``grid_sample`` per level (:func:`_sampled_attention`; GridSample is an ONNX op).

    Args:
        value: (B, S, M, D) values of all levels, flattened and concatenated (S = sum h_l*w_l),
            M heads of D channels.
        spatial_shapes: the (h_l, w_l) of each of the L levels, in the order of ``value``.
        sampling_locations: (B, Lq, M, L, P, 2) x, y in [0, 1] of the level (0 = left/top edge).
        attention_weights: (B, Lq, M, L, P), summing to 1 over (L, P).

    Returns:
        (B, Lq, M * D) attended values.
    """
    inputs = (value, sampling_locations, attention_weights)
    if is_exporting():
        return _sampled_attention(value, spatial_shapes, sampling_locations, attention_weights)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        # sampled values: D per (image, query, head, level, point)
        if value.shape[-1] * sampling_locations[..., 0].numel() < _RECOMPUTE_FROM:
            return _sampled_attention(value, spatial_shapes, sampling_locations, attention_weights)
        return _RecomputedAttention.apply(value, tuple(spatial_shapes), sampling_locations,
                                          attention_weights)
    return _gathered_attention(value, spatial_shapes, sampling_locations, attention_weights)


def _level_grids(sampling_locations: Tensor) -> Tensor:
    """(B, Lq, M, L, P, 2) locations in [0, 1] -> (B*M, L, Lq, P, 2) ``grid_sample`` grids in
    [-1, 1]."""
    return (2 * sampling_locations - 1).permute(0, 2, 3, 1, 4, 5).flatten(0, 1)


def _level_values(value: Tensor, spatial_shapes: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """(B, S, M, D) -> one (B*M, D, h_l, w_l) map per level."""
    batch, _, heads, dim = value.shape
    maps, start = [], 0
    for h, w in spatial_shapes:
        # slicing (not split) keeps the sizes symbolic when traced for export
        maps.append(value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(batch * heads, dim, h, w))
        start = start + h * w
    return maps


class _RecomputedAttention(torch.autograd.Function):
    """:func:`multi_scale_deformable_attention` with autograd that keeps only its inputs.

    Autograd through ``grid_sample`` would keep the sampled values, (B*M, D, Lq, L*P) floats per
    layer (132 MB at Mask2Former R50's 512x512 training sizes, 6 layers); this backward samples
    them again one level at a time. The gradients are those of :func:`_sampled_attention`:
    ``grid_sample``'s own backward for the values and locations, sampled values dotted with the
    output gradient for the attention weights.
    """

    @staticmethod
    def forward(ctx, value: Tensor, spatial_shapes: Tuple[Tuple[int, int], ...],
                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
        ctx.save_for_backward(value, sampling_locations, attention_weights)
        ctx.spatial_shapes = spatial_shapes
        return _gathered_attention(value, spatial_shapes, sampling_locations, attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        value, sampling_locations, attention_weights = ctx.saved_tensors
        batch, size, heads, dim = value.shape
        _, num_queries, _, levels, points, _ = sampling_locations.shape
        # (B, Lq, M*D) -> (B*M, D, Lq, 1): the gradient of every sampled value of a query
        grad = grad_out.reshape(batch, num_queries, heads, dim).permute(0, 2, 3, 1)
        grad = grad.reshape(batch * heads, dim, num_queries, 1)
        weights = attention_weights.permute(0, 2, 3, 1, 4).reshape(batch * heads, levels, 1,
                                                                   num_queries, points)
        grids = _level_grids(sampling_locations)
        need_value = ctx.needs_input_grad[0]
        grad_values, grad_grids, grad_weights = [], [], []
        for level, v in enumerate(_level_values(value, ctx.spatial_shapes)):
            grid = grids[:, level]
            sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (B*M, D, Lq, P)
            grad_weights.append((sampled * grad).sum(1))  # (B*M, Lq, P)
            del sampled
            # bilinear, zeros padding, align_corners False
            grad_v, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                grad * weights[:, level], v, grid, 0, 0, False, [need_value, True])
            grad_grids.append(grad_grid)  # (B*M, Lq, P, 2)
            if need_value:
                grad_values.append(grad_v.flatten(2))  # (B*M, D, h*w)
        grad_locations = 2 * torch.stack(grad_grids, 1).view(batch, heads, levels, num_queries,
                                                             points, 2).permute(0, 3, 1, 2, 4, 5)
        grad_weights = torch.stack(grad_weights, 1).view(batch, heads, levels, num_queries,
                                                         points).permute(0, 3, 1, 2, 4)
        grad_value = None
        if need_value:
            grad_value = torch.cat(grad_values, -1).view(batch, heads, dim, size).permute(0, 3, 1, 2)
        return grad_value, None, grad_locations, grad_weights


def _sampled_attention(value: Tensor, spatial_shapes: Sequence[Tuple[int, int]],
                       sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """:func:`multi_scale_deformable_attention` with ``grid_sample`` on each level."""
    batch, _, heads, dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    grids = _level_grids(sampling_locations)
    sampled = [F.grid_sample(v, grids[:, level], mode="bilinear", padding_mode="zeros",
                             align_corners=False)  # (B*M, D, Lq, P)
               for level, v in enumerate(_level_values(value, spatial_shapes))]
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(batch * heads, 1, num_queries,
                                                                levels * points)
    out = (torch.cat(sampled, dim=-1) * weights).sum(-1)  # (B*M, D, Lq)
    return out.view(batch, heads * dim, num_queries).transpose(1, 2)


def _gathered_attention(value: Tensor, spatial_shapes: Sequence[Tuple[int, int]],
                        sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """:func:`multi_scale_deformable_attention` as one weighted sum of value rows (no autograd).

    Bilinear sampling is linear in the values: each sampling point reads its 4 neighbouring
    positions with weights (1 - |dx|)(1 - |dy|) (0 outside the map, as ``grid_sample`` with zero
    padding and align_corners False). Multiplied by the attention weights, that gives every
    (image, query, head) 4 * L * P (row, weight) pairs, summed by ``F.embedding_bag(...,
    per_sample_weights=..., mode="sum")``, which reads only those rows. Everything stays in the
    (B, Lq, M, ...) order of the inputs: the value rows are (image, position, head) and the bags
    (image, query, head), so neither the values nor the output are permuted.
    """
    batch, size, heads, dim = value.shape
    num_queries = sampling_locations.shape[1]
    dtype, device = value.dtype, value.device
    shapes = torch.tensor(spatial_shapes, dtype=torch.int32, device=device)  # (L, 2) = (h, w)
    h_int, w_int = shapes[:, :1], shapes[:, 1:]  # (L, 1), broadcast over the points
    areas = h_int * w_int
    starts = areas.cumsum(0) - areas  # first position of each level
    # (B, Lq, M, L, P); pixel centres at integer coordinates
    px = sampling_locations[..., 0] * w_int.to(dtype) - 0.5
    py = sampling_locations[..., 1] * h_int.to(dtype) - 0.5
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    x0, y0 = x0.to(torch.int32), y0.to(torch.int32)
    zero = fx.new_zeros(())
    # weights of the left/right columns and top/bottom rows, 0 where they are outside the map
    left = torch.where((x0 >= 0) & (x0 < w_int), 1 - fx, zero)
    right = torch.where((x0 >= -1) & (x0 < w_int - 1), fx, zero)
    top = torch.where((y0 >= 0) & (y0 < h_int), (1 - fy) * attention_weights, zero)
    bottom = torch.where((y0 >= -1) & (y0 < h_int - 1), fy * attention_weights, zero)
    weights = torch.stack((top * left, top * right, bottom * left, bottom * right), -1)
    # positions of the 4 corners, each clamped into its level (a corner outside has weight 0;
    # any position of the level stands in for it), then rows (image, position, head)
    corner = torch.cat((torch.zeros_like(w_int), torch.ones_like(w_int), w_int, w_int + 1), -1)
    pos = (y0 * w_int + x0).unsqueeze(-1) + corner[:, None]  # (B, Lq, M, L, P, 4)
    pos = torch.minimum(pos.clamp_(min=0), (areas - 1)[:, None])
    image = torch.arange(batch, dtype=torch.int32, device=device).view(batch, 1, 1, 1, 1, 1)
    head = torch.arange(heads, dtype=torch.int32, device=device).view(1, 1, heads, 1, 1, 1)
    first = (image * size + starts[:, None]) * heads + head  # (B, 1, M, L, 1, 1), small
    rows = pos.mul_(heads).add_(first)
    out = F.embedding_bag(rows.view(batch * num_queries * heads, -1), value.reshape(-1, dim),
                          mode="sum", per_sample_weights=weights.view(batch * num_queries * heads, -1))
    return out.view(batch, num_queries, heads * dim)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention of queries over L flattened feature levels."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        """
        Args:
            d_model: channels of queries and values.
            n_levels: number of feature levels L.
            n_heads: attention heads M (``d_model`` must be divisible by it).
            n_points: sampling points P per head and level.
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on rings around the reference point
        (head h points in direction 2*pi*h/M, point p at distance p+1), uniform attention."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * distances[None, None, :, None]  # (M, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.n_levels, -1, -1).flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Sequence[Tuple[int, int]],
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (B, Lq, C) queries (with their position embedding added).
            reference_points: (B, Lq, L, 2) x, y in [0, 1] of each query on each level.
            input_flatten: (B, S, C) the values of all levels, flattened and concatenated.
            spatial_shapes: the (h_l, w_l) of each level.
            input_padding_mask: (B, S) True where the input is padding (its value is zeroed).

        Returns:
            (B, Lq, C)
        """
        batch, num_queries, _ = query.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], self.n_heads, self.d_model // self.n_heads)
        shape = (batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = self.attention_weights(query).view(*shape[:3], self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(shape)
        # offsets are in pixels of their level: normalise by (w_l, h_l) (stacked, not
        # torch.tensor(...), so that traced sizes stay symbolic in an export)
        normalizer = torch.stack([torch.stack([torch.as_tensor(w), torch.as_tensor(h)])
                                  for h, w in spatial_shapes]).to(offsets)
        locations = (reference_points[:, :, None, :, None, :]
                     + offsets / normalizer[None, None, None, :, None, :])
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
