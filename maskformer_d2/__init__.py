"""maskformer_d2: MaskFormer as a detectron2 extension.

Importing the package registers everything it provides in detectron2's registries (meta-arch,
backbones, sem-seg heads, datasets) and in its own (pixel decoders, transformer predictors).
"""
import sys
import warnings

# detectron2 calls torch.jit.script at import time, which torch >= 2.10 deprecates noisily
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

__version__ = "0.1.0"

_INSTALL_HINT = (
    "maskformer_d2 needs {name}, which is not importable ({err}). Run `make setup` in the "
    "maskformer_d2 checkout (it installs everything into .venv/), or see README.md "
    "'Installing upstream detectron2' to use your own detectron2 build."
)


class MissingDependencyError(ImportError):
    """A dependency of maskformer_d2 is missing; the message says how to install it."""


def _one_line_excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    if issubclass(exc_type, MissingDependencyError):
        print(f"error: {exc}", file=sys.stderr)
    else:
        _previous(exc_type, exc, tb)


def _dependencies_importable() -> bool:
    """True when torch, torchvision and detectron2 import; else one clear error (see below)."""
    for name in ("torch", "torchvision", "detectron2"):
        try:
            __import__(name)
        except ImportError as e:
            # `python -m maskformer_d2.env` must still run to say what is missing
            if "maskformer_d2.env" in getattr(sys, "orig_argv", []):
                return False
            sys.excepthook = _one_line_excepthook
            raise MissingDependencyError(_INSTALL_HINT.format(name=name, err=e)) from None
    return True


if _dependencies_importable():
    from .config import add_maskformer_config  # noqa: E402
    from . import data, modeling  # noqa: E402,F401  (registers everything)
    from .modeling import MaskFormer  # noqa: E402

__all__ = ["add_maskformer_config", "MaskFormer", "MissingDependencyError", "__version__"]
