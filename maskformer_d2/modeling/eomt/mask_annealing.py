"""EoMT's masked attention and how training anneals it away.

Before each of the last ``num_blocks`` ViT blocks the model predicts masks; in that block a
query may attend to the patches its mask covers (mask logit > 0 at patch resolution) and to all
query and prefix tokens. Each query's mask is kept with probability ``p_i`` of its block and
dropped (full attention) otherwise. Training lowers ``p_i`` from 1 to 0 on a polynomial schedule
between per-block start and end iterations, so the trained model needs no masks: with every
``p_i == 0`` inference skips the intermediate predictions altogether.

The probabilities are a buffer (saved with the model: a resumed run continues from them) and are
set from the iteration at each training step, as the official code sets them after each one.
"""
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["annealed_probability", "MaskAnnealing", "query_attention_mask"]


def annealed_probability(iteration: int, start: int, end: int, power: float) -> float:
    """1 before ``start``, 0 from ``end`` on, ``(1 - progress) ** power`` in between."""
    if iteration < start:
        return 1.0
    if iteration >= end:
        return 0.0
    return (1.0 - (iteration - start) / (end - start)) ** power


class MaskAnnealing(nn.Module):
    """The probability ``probs[i]`` that query block ``i`` masks a query's attention.

    Args:
        num_blocks: number of query blocks.
        start_steps, end_steps: per block, the iterations between which its probability falls
            from 1 to 0 (empty: no schedule, the probabilities stay as they are).
        power: exponent of the polynomial decay.
    """

    def __init__(self, num_blocks: int, start_steps: Sequence[int] = (), end_steps: Sequence[int] = (),
                 power: float = 0.9):
        super().__init__()
        if len(start_steps) != len(end_steps) or (start_steps and len(start_steps) != num_blocks):
            raise ValueError(
                f"MODEL.EOMT.ATTN_MASK_ANNEALING_START_STEPS ({len(start_steps)}) and END_STEPS "
                f"({len(end_steps)}) need one iteration per query block (MODEL.EOMT.NUM_BLOCKS="
                f"{num_blocks})")
        bad = [i for i, (s, e) in enumerate(zip(start_steps, end_steps)) if e < s]
        if bad:
            raise ValueError(f"MODEL.EOMT.ATTN_MASK_ANNEALING_END_STEPS[{bad[0]}] is before its start step")
        self.start_steps = list(start_steps)
        self.end_steps = list(end_steps)
        self.power = power
        self.register_buffer("probs", torch.ones(num_blocks))

    @property
    def scheduled(self) -> bool:
        return bool(self.start_steps)

    @torch.no_grad()
    def step(self, iteration: int) -> None:
        """Set every block's probability to its value at ``iteration`` (no-op without schedule)."""
        for i, (start, end) in enumerate(zip(self.start_steps, self.end_steps)):
            self.probs[i] = annealed_probability(iteration, start, end, self.power)

    def extra_repr(self) -> str:
        return f"start_steps={self.start_steps}, end_steps={self.end_steps}, power={self.power}"


def query_attention_mask(mask_logits: Tensor, num_tokens: int, num_prefix: int,
                         grid_size: Tuple[int, int], prob: Union[float, Tensor]) -> Tensor:
    """The (B, N, N) attention mask of a query block (True = may attend).

    Tokens are ordered [Q queries, ``num_prefix`` class/register tokens, h*w patches]. Query rows
    see a patch only where their mask logit, bilinearly resized to the patch grid, is > 0; each
    query's row is reset to full attention with probability ``1 - prob`` (one ``torch.rand(B, Q)``
    draw when ``prob < 1``, as the official code draws it). All other entries are True.

    Args:
        mask_logits: (B, Q, H', W') mask logits of the prediction made before the block.
        num_tokens: N.
        num_prefix: class and register tokens.
        grid_size: (h, w) patch grid.
        prob: probability that a query's mask is kept (a number or a 0-dim tensor).
    """
    b, q = mask_logits.shape[:2]
    mask = torch.ones(b, num_tokens, num_tokens, dtype=torch.bool, device=mask_logits.device)
    covered = F.interpolate(mask_logits, size=grid_size, mode="bilinear", align_corners=False) > 0
    mask[:, :q, q + num_prefix:] = covered.flatten(2)
    if prob < 1:
        unmasked = torch.rand(b, q, device=mask_logits.device) > prob
        mask[:, :q, q + num_prefix:] |= unmasked[:, :, None]
    return mask
