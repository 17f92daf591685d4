"""EoMT's semantic inference by sliding windows (the official semantic evaluation).

The test mapper resizes an image so that its short side is the window size; square windows then
cover the long side with as little, evenly spread, overlap as possible. Each window's semantic
scores (``sum_q p_q(c) * sigmoid(mask_q)`` at window size) are averaged where windows overlap,
and the average is resized (bilinear) to the output size.
"""
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["window_spans", "merge_window_scores"]

Span = Tuple[int, int, int, int]  # top, bottom, left, right


def window_spans(height: int, width: int, window: int) -> List[Span]:
    """(top, bottom, left, right) of the windows over a (height, width) image.

    ``ceil(long / window)`` windows along the long side (along the width when square), starts
    ``int(j * (window - overlap / (n - 1)))`` where ``overlap = n * window - long``; each window
    spans the whole short side (cropped to the image when it is shorter than the window).
    """
    long_side = max(height, width)
    n = max(1, math.ceil(long_side / window))
    overlap = n * window - long_side
    step = window - (overlap / (n - 1) if overlap > 0 and n > 1 else 0)
    spans = []
    for j in range(n):
        start = int(j * step)
        end = min(start + window, long_side)
        spans.append((start, end, 0, width) if height > width else (0, height, start, end))
    return spans


def merge_window_scores(scores: Sequence[Tensor], spans: Sequence[Span], image_size: Tuple[int, int],
                        output_size: Tuple[int, int]) -> Tensor:
    """The per-pixel mean of overlapping windows' (K, h_j, w_j) scores over an image of
    ``image_size``, resized (bilinear, align_corners False) to ``output_size``: (K, H, W)."""
    total = scores[0].new_zeros((scores[0].shape[0], *image_size))
    count = torch.zeros_like(total)
    for s, (top, bottom, left, right) in zip(scores, spans):
        total[:, top:bottom, left:right] += s
        count[:, top:bottom, left:right] += 1
    mean = total / count
    return F.interpolate(mean[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]
