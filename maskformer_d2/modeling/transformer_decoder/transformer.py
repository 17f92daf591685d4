"""DETR's transformer: encoder and decoder layers with post- or pre-LayerNorm.

Differences from ``torch.nn.Transformer`` (as in DETR): position encodings are added to the
queries and keys of every attention (never to the values), the encoder has a final LayerNorm only
with pre-norm, and the decoder can return the (final-normed) output of every layer.

Sequences are laid out (S, B, C) as ``nn.MultiheadAttention`` expects by default; module and
parameter names (``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1..3``) are
those of the official MaskFormer checkpoints.
"""
import copy
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "TransformerEncoderOnly",
    "Transformer",
]

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"transformer activation {name!r} is not one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


class _ResidualLayer(nn.Module):
    """What encoder and decoder layers share: self-attention (plus cross-attention in the decoder),
    a feed-forward block, and a residual + LayerNorm around each of these sublayers
    (``norm{i}``/``dropout{i}`` for sublayer i).

    Args:
        d_model: feature width C.
        nhead: attention heads.
        dim_feedforward: hidden width of the feed-forward block.
        dropout: dropout in attention, feed-forward and residual branches.
        activation: "relu", "gelu" or "glu" (feed-forward).
        normalize_before: pre-LayerNorm instead of post-LayerNorm.
    """

    cross_attention = False  # adds ``multihead_attn`` (queries attend to the memory)

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        if self.cross_attention:
            self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        num_sublayers = 3 if self.cross_attention else 2
        for i in range(1, num_sublayers + 1):
            self.add_module(f"norm{i}", nn.LayerNorm(d_model))
        for i in range(1, num_sublayers + 1):
            self.add_module(f"dropout{i}", nn.Dropout(dropout))
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def residual(
        self, x: Tensor, sublayer: Callable[[Tensor], Tensor], norm: nn.LayerNorm, dropout: nn.Dropout
    ) -> Tensor:
        """Post-norm: ``norm(x + sublayer(x))``; pre-norm: ``x + sublayer(norm(x))``."""
        if self.normalize_before:
            return x + dropout(sublayer(norm(x)))
        return norm(x + dropout(sublayer(x)))


class TransformerEncoderLayer(_ResidualLayer):
    """Self-attention then feed-forward, each wrapped in a residual with LayerNorm."""

    cross_attention = False

    def forward(
        self, src: Tensor, src_key_padding_mask: Optional[Tensor] = None, pos: Optional[Tensor] = None
    ) -> Tensor:
        """
        Args:
            src: (S, B, C) input sequence.
            src_key_padding_mask: (B, S) bool, True at padded positions.
            pos: (S, B, C) position encoding, added to queries and keys.

        Returns:
            (S, B, C)
        """

        def attend(x: Tensor) -> Tensor:
            qk = _with_pos(x, pos)
            return self.self_attn(qk, qk, value=x, key_padding_mask=src_key_padding_mask)[0]

        src = self.residual(src, attend, self.norm1, self.dropout1)
        return self.residual(src, self.feed_forward, self.norm2, self.dropout2)


class TransformerDecoderLayer(_ResidualLayer):
    """Query self-attention, cross-attention to the memory, feed-forward; each residual + LN."""

    cross_attention = True

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            tgt: (Q, B, C) query features.
            memory: (S, B, C) encoder output.
            memory_key_padding_mask: (B, S) bool, True at padded memory positions.
            pos: (S, B, C) position encoding of the memory (added to the keys).
            query_pos: (Q, B, C) learned query embedding (added to the queries).

        Returns:
            (Q, B, C)
        """

        def self_attend(x: Tensor) -> Tensor:
            qk = _with_pos(x, query_pos)
            return self.self_attn(qk, qk, value=x)[0]

        def cross_attend(x: Tensor) -> Tensor:
            return self.multihead_attn(
                query=_with_pos(x, query_pos),
                key=_with_pos(memory, pos),
                value=memory,
                key_padding_mask=memory_key_padding_mask,
            )[0]

        tgt = self.residual(tgt, self_attend, self.norm1, self.dropout1)
        tgt = self.residual(tgt, cross_attend, self.norm2, self.dropout2)
        return self.residual(tgt, self.feed_forward, self.norm3, self.dropout3)


def _clones(layer: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(n))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, with an optional final norm (used with pre-norm)."""

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self, src: Tensor, src_key_padding_mask: Optional[Tensor] = None, pos: Optional[Tensor] = None
    ) -> Tensor:
        """(S, B, C) -> (S, B, C); see :class:`TransformerEncoderLayer` for the arguments."""
        for layer in self.layers:
            src = layer(src, src_key_padding_mask=src_key_padding_mask, pos=pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """A stack of decoder layers followed by a LayerNorm.

    With ``return_intermediate`` it returns the output of every layer, each passed through the
    final norm, so that every layer can be supervised (MaskFormer's deep supervision).
    """

    def __init__(
        self,
        decoder_layer: nn.Module,
        num_layers: int,
        norm: nn.Module,
        return_intermediate: bool = False,
    ):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Returns:
            (L, Q, B, C): L = num_layers with ``return_intermediate``, else 1 (the last layer).
        """
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos)
            if self.return_intermediate:
                outputs.append(self.norm(tgt))
        if not self.return_intermediate:
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


def _xavier_init(module: nn.Module) -> None:
    """DETR's init: xavier-uniform on every matrix (attention projections, linear weights)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _image_to_sequence(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (H*W, B, C)"""
    return x.flatten(2).permute(2, 0, 1)


def _sequence_to_image(x: Tensor, height: int, width: int) -> Tensor:
    """(H*W, B, C) -> (B, C, H, W)"""
    return x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], height, width)


class TransformerEncoderOnly(nn.Module):
    """A transformer encoder over the pixels of a feature map (MaskFormer's pixel decoder).

    The encoder has a final LayerNorm only with pre-norm layers.
    """

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__()
        layer = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, activation, normalize_before
        )
        final_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(layer, num_encoder_layers, final_norm)
        _xavier_init(self.encoder)
        self.d_model = d_model
        self.nhead = nhead

    def encode(
        self, src: Tensor, mask: Optional[Tensor], pos_embed: Tensor
    ) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """
        Args:
            src: (B, C, H, W) features, C = d_model.
            mask: (B, H, W) bool, True at padded pixels, or None.
            pos_embed: (B, C, H, W) position encoding.

        Returns:
            memory (H*W, B, C), key padding mask (B, H*W) or None, position encoding (H*W, B, C).
        """
        key_padding_mask = None if mask is None else mask.flatten(1)
        pos = _image_to_sequence(pos_embed)
        memory = self.encoder(_image_to_sequence(src), src_key_padding_mask=key_padding_mask, pos=pos)
        return memory, key_padding_mask, pos

    def forward(self, src: Tensor, mask: Optional[Tensor], pos_embed: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) encoded features; arguments as in :meth:`encode`."""
        memory, _, _ = self.encode(src, mask, pos_embed)
        return _sequence_to_image(memory, *src.shape[-2:])


class Transformer(TransformerEncoderOnly):
    """DETR's encoder-decoder: learned queries attend to the encoded image features."""

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
        return_intermediate_dec: bool = False,
    ):
        super().__init__(
            d_model, nhead, num_encoder_layers, dim_feedforward, dropout, activation, normalize_before
        )
        decoder_layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward, dropout, activation, normalize_before
        )
        self.decoder = TransformerDecoder(
            decoder_layer,
            num_decoder_layers,
            nn.LayerNorm(d_model),
            return_intermediate=return_intermediate_dec,
        )
        _xavier_init(self.decoder)

    def forward(
        self, src: Tensor, mask: Optional[Tensor], query_embed: Tensor, pos_embed: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            src: (B, C, H, W) image features, C = d_model.
            mask: (B, H, W) bool, True at padded pixels, or None.
            query_embed: (Q, C) learned query positions.
            pos_embed: (B, C, H, W) position encoding of ``src``.

        Returns:
            hs: (L, B, Q, C) decoder outputs (L = decoder layers if ``return_intermediate_dec``,
                else 1);
            memory: (B, C, H, W) encoder output.
        """
        memory, key_padding_mask, pos = self.encode(src, mask, pos_embed)
        query_pos = query_embed.unsqueeze(1).repeat(1, src.shape[0], 1)
        hs = self.decoder(
            torch.zeros_like(query_pos),
            memory,
            memory_key_padding_mask=key_padding_mask,
            pos=pos,
            query_pos=query_pos,
        )
        return hs.transpose(1, 2), _sequence_to_image(memory, *src.shape[-2:])
