"""Every exception class of maskformer_d2, and what the one-line error reports share.

The command-line tools (``train_net.py``, ``demo/demo.py``, ``tools/*``) print ``str(error)`` of
these as one line and exit non-zero; each message names the file or config key at fault. This
module imports nothing outside the standard library, so it works before the dependency check.
"""

__all__ = [
    "MissingDependencyError",
    "ImageReadError",
    "CheckpointReadError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "HFImportError",
    "DownloadError",
    "UsageError",
    "ExportError",
    "first_line",
]


class MissingDependencyError(ImportError):
    """A dependency of maskformer_d2 is missing; the message says how to install it."""


class ImageReadError(OSError):
    """An image or label file is missing or cannot be decoded; the message names the file."""


class CheckpointReadError(OSError):
    """The checkpoint file exists but cannot be read as a .pth / .pkl checkpoint."""


class UnsafeCheckpointError(CheckpointReadError):
    """The checkpoint holds Python objects whose unpickling could run code; it was not loaded."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model built from the config."""


class HFImportError(ValueError):
    """The Hugging Face model uses a feature maskformer_d2 cannot express."""


class ExportError(ValueError):
    """A model cannot be exported, or an exported model file cannot be used with this config."""


class DownloadError(OSError):
    """A URL was refused (scheme, ``..`` segments, redirect, size) or its download failed."""


class UsageError(Exception):
    """A wrong or contradictory command line (the demo exits with status 2)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, "" if it has none.

    A KeyError's message comes without the quotes ``str(KeyError)`` adds.
    """
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = message.strip().splitlines()
    return lines[0] if lines else ""
