"""Counting integer labels (confusion matrices, areas) with OpenCV's histograms where they are
8-bit: one pass over the pixels at memory speed instead of ``np.bincount`` over an int64 copy.
The same counts as ``np.bincount``.
"""
import cv2
import numpy as np

__all__ = ["pair_counts", "value_counts"]

# OpenCV's histograms count in float32, exact up to 2**24 per bin: images up to that many pixels
_FLOAT_COUNT_LIMIT = 1 << 24


def value_counts(values: np.ndarray, length: int) -> np.ndarray:
    """``np.bincount(values.ravel(), minlength=length)`` for non-negative integers below ``length``
    (int64 counts); uint8 values counted by OpenCV's histogram, several times faster.

    Raises:
        ValueError: a value of ``length`` or more (bincount would return a longer array).
    """
    if values.dtype != np.uint8 or not 0 < values.size < _FLOAT_COUNT_LIMIT:
        counts = np.bincount(values.reshape(-1), minlength=length)
    else:
        counts = cv2.calcHist([values], [0], None, [256], [0, 256]).reshape(-1).astype(np.int64)
        counts = np.pad(counts, (0, max(0, length - 256)))
    if len(counts) > length and counts[length:].any():
        raise ValueError(f"values up to {int(np.flatnonzero(counts)[-1])} counted into {length} bins")
    return counts[:length]


def pair_counts(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> np.ndarray:
    """(num_rows, num_cols) int64 counts of the (rows[i], cols[i]) pairs of two equally shaped
    label maps, rows in [0, num_rows), cols in [0, num_cols) (a confusion matrix); by an OpenCV
    histogram when both are 8-bit (of one byte per pair when 256 pairs or fewer can occur,
    else 2-D), else ``np.bincount``."""
    if rows.dtype == cols.dtype == np.uint8:
        if num_rows * num_cols <= 256 and num_cols < 256:  # a byte a pair
            index = rows * np.uint8(num_cols)
            index += cols
            return value_counts(index, num_rows * num_cols).reshape(num_rows, num_cols)
        if 0 < rows.size < _FLOAT_COUNT_LIMIT and num_rows and num_cols:
            counts = cv2.calcHist([rows, cols], [0, 1], None, [num_rows, num_cols], [0, num_rows, 0, num_cols])
            return counts.astype(np.int64)
    index = rows.astype(np.int64) * num_cols
    index += cols
    return value_counts(index, num_rows * num_cols).reshape(num_rows, num_cols)
