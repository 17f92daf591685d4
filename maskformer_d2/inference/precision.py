"""Inference precision: fp32 (exact, the default) or bf16 under autocast.

``TEST.PRECISION: bf16`` (``--precision bf16`` on ``train_net.py``, ``demo/demo.py`` and
``benchmarks/inference.py``) runs the network -- not the pre- or post-processing -- under
``torch.autocast`` in bfloat16 when the device has bf16 units (on a CPU: AVX512-BF16 or AMX);
elsewhere one warning says so and fp32 runs. Its accuracy cost on the shapes val split is measured
in docs/performance.md and tested in tests/test_precision.py.
"""
import contextlib
import functools
import logging
from typing import ContextManager

import torch

__all__ = ["PRECISIONS", "cpu_supports_bf16", "resolve_precision", "autocast_for"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic units (Linux: the flags of /proc/cpuinfo; oneDNN
    emulates bf16 on other AVX512 CPUs, slower than fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def device_supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision inference will run at: ``precision`` ("fp32" or "bf16") if ``device`` can,
    else "fp32" with one warning line."""
    precision = precision.lower()
    if precision not in PRECISIONS:
        raise ValueError(f"TEST.PRECISION is {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not device_supports_bf16(torch.device(device)):
        logger.warning(f"TEST.PRECISION bf16: this {torch.device(device).type.upper()} has no bf16 "
                       "units (needs AVX512-BF16 or AMX on a CPU); running in fp32")
        return "fp32"
    return precision


def autocast_for(precision: str, device: torch.device) -> ContextManager:
    """The context the network runs in at a resolved ``precision``."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
