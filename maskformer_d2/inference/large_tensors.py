"""Large CPU output tensors backed by transparent huge pages.

The first write to freshly allocated memory makes the kernel map and zero it one 4 KiB page at a
time: filling a new (150, 512, 512) float32 semantic output costs 38 400 page faults. Advised for
2 MiB pages, the same allocation faults once per 2 MiB and fills in a fraction of the time
(measured in docs/performance.md). Advising is Linux ``madvise(MADV_HUGEPAGE)``, honoured when
/sys/kernel/mm/transparent_hugepage/enabled is "always" or "madvise", a no-op when it is "never".
PyTorch does the same for every allocation when THP_MEM_ALLOC_ENABLE=1 is set before it starts;
:func:`empty_large` does it for the few large outputs the post-processing allocates itself.
Values are unaffected.
"""
import ctypes
import ctypes.util
import functools
import sys
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["empty_large"]

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MIN_BYTES = 2 * _HUGE_PAGE  # below this no whole aligned huge page fits for sure


@functools.lru_cache(maxsize=None)
def _madvise():
    """libc's madvise, or None where there is none (not Linux, no libc found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def advise_huge_pages(tensor: Tensor) -> bool:
    """Advise the whole 2 MiB pages inside ``tensor``'s memory for huge pages, before anything is
    written to it. Returns whether the advice was given."""
    madvise = _madvise()
    nbytes = tensor.numel() * tensor.element_size()
    if madvise is None or tensor.device.type != "cpu" or nbytes < _MIN_BYTES:
        return False
    start = (tensor.data_ptr() + _HUGE_PAGE - 1) // _HUGE_PAGE * _HUGE_PAGE
    stop = (tensor.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    return stop > start and madvise(start, stop - start, _MADV_HUGEPAGE) == 0


def empty_large(shape: Sequence[int], like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``like.new_empty(shape)`` (uninitialised), on huge pages when it is a large CPU tensor."""
    out = like.new_empty(tuple(shape), dtype=dtype or like.dtype)
    advise_huge_pages(out)
    return out
