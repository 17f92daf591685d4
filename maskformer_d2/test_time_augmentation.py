"""Moved to :mod:`maskformer_d2.engine.tta` (this path works until 0.2, with a warning)."""
from ._deprecated import moved_names

__getattr__ = moved_names(__name__, "maskformer_d2.engine.tta", ["SemanticSegmentorWithTTA"])
