"""Moved to :mod:`maskformer_d2.engine.solver` (this path works until 0.2, with a warning)."""
from ._deprecated import moved_names

__getattr__ = moved_names(
    __name__, "maskformer_d2.engine.solver",
    ["build_optimizer", "build_lr_scheduler", "param_groups", "WarmupPolyLR"],
)
