"""Reading checkpoint files without running code from them.

A pickle can call any Python function while it is read, so a downloaded checkpoint is code unless
the reader restricts what it may build:

* ``.pkl`` (detectron2 / official model-zoo files): a restricted unpickler that builds only
  containers, strings, numbers and numpy arrays / dtypes / scalars, which is all such files hold;
* ``.pth``: ``torch.load(weights_only=True)``, which builds only tensors, containers and plain
  values (everything our trainer writes, resume state included).

Anything else is refused with :class:`~maskformer_d2.errors.UnsafeCheckpointError`, one line naming
the object the file asked for. Full pickle is used only when the user says so explicitly:
``--allow-unsafe-pickle`` on the command line (train_net.py, demo/demo.py) or
``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1`` in the environment.
"""
import os
import pickle
import re
from typing import Any, BinaryIO

import torch

from .errors import UnsafeCheckpointError

__all__ = [
    "UNSAFE_PICKLE_ENV",
    "UNSAFE_PICKLE_FLAG",
    "unsafe_pickle_allowed",
    "allow_unsafe_pickle",
    "load_pkl",
    "load_pth",
]

UNSAFE_PICKLE_ENV = "MASKFORMER_D2_ALLOW_UNSAFE_PICKLE"
UNSAFE_PICKLE_FLAG = "--allow-unsafe-pickle"

# (module, name) a model-zoo .pkl may reference: numpy's array / dtype / scalar reconstruction
# (under numpy 1 and numpy 2 module names) and the containers Python pickles by name
_ALLOWED = frozenset(
    [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode")]
    + [(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "complex", "bytearray", "slice")]
)


def unsafe_pickle_allowed() -> bool:
    """Whether the user allowed full pickle (``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``)."""
    return os.environ.get(UNSAFE_PICKLE_ENV, "") == "1"


def allow_unsafe_pickle() -> None:
    """Allow full pickle in this process and the processes it starts (the CLI flag does this)."""
    os.environ[UNSAFE_PICKLE_ENV] = "1"


def _refusal(name: str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"checkpoint {name}: refused to unpickle {what} (weights never need it, and unpickling it "
        f"could run code from the file); if you trust this file, pass {UNSAFE_PICKLE_FLAG} "
        f"(or set {UNSAFE_PICKLE_ENV}=1)"
    )


class _ModelZooUnpickler(pickle.Unpickler):
    """Builds only what detectron2 model-zoo files hold; refuses every other global."""

    def __init__(self, f: BinaryIO, name: str):
        super().__init__(f, encoding="latin1")  # Python 2 era files, as detectron2 reads them
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _refusal(self._name, f"{module}.{name}")
        return super().find_class(module, name)


def load_pkl(path: str, name: str) -> Any:
    """Unpickle a ``.pkl`` checkpoint; ``name`` (the path the user gave) is used in messages."""
    with open(path, "rb") as f:
        if unsafe_pickle_allowed():
            return pickle.load(f, encoding="latin1")
        return _ModelZooUnpickler(f, name).load()


def load_pth(path: str, name: str) -> Any:
    """``torch.load`` a ``.pth`` checkpoint with ``weights_only=True`` (full pickle only when allowed)."""
    if unsafe_pickle_allowed():
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # an object weights_only refuses to build
        if found is None:  # not a pickle of this kind at all: corrupt or truncated
            raise
        raise _refusal(name, found.group(1)) from None
