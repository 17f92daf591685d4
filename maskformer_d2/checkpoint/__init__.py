"""Checkpoint I/O: reading weights without running code from them (local files or downloads
into the cache), loading them strictly into a model, and writing checkpoints atomically."""
from .atomic import leftovers_of_dead_writers, write_atomically
from .checkpointer import (
    CheckpointMismatchError,
    CheckpointReadError,
    MaskFormerCheckpointer,
    UnsafeCheckpointError,
    describe_mismatch,
    resume_candidates,
    summarize_keys,
    tagged_checkpoint,
)
from .remote import download, is_url
from .safe_load import allow_unsafe_pickle, load_pkl, load_pth, load_safetensors, unsafe_pickle_allowed

__all__ = [
    "MaskFormerCheckpointer", "CheckpointMismatchError", "CheckpointReadError", "UnsafeCheckpointError",
    "tagged_checkpoint", "resume_candidates", "describe_mismatch", "summarize_keys",
    "write_atomically", "leftovers_of_dead_writers", "download", "is_url",
    "unsafe_pickle_allowed", "allow_unsafe_pickle", "load_pkl", "load_pth", "load_safetensors",
]
