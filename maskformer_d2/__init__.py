"""maskformer_d2: MaskFormer as a detectron2 extension.

Importing the package registers everything it provides in detectron2's registries (meta-arch,
backbones, sem-seg heads, datasets) and in its own (pixel decoders, transformer predictors,
dataset mappers, output tasks).
"""
import sys
import warnings

from .errors import MissingDependencyError

# detectron2 calls torch.jit.script at import time, which torch >= 2.10 deprecates noisily
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

__version__ = "0.1.0"


def _dependencies_importable() -> bool:
    """True when torch, torchvision and detectron2 import; else one clear
    :class:`MissingDependencyError` (``python -m maskformer_d2.utils.env`` reports them all instead)."""
    for name in ("torch", "torchvision", "detectron2"):
        try:
            __import__(name)
        except ImportError as e:
            if "maskformer_d2.utils.env" in getattr(sys, "orig_argv", []):
                return False
            raise MissingDependencyError(
                f"maskformer_d2 needs {name}, which is not importable ({e}). Run `make setup` in the "
                "maskformer_d2 checkout (it installs everything into .venv/), or see docs/getting_started.md "
                "(Install) to use your own detectron2 build."
            ) from None
    return True


if _dependencies_importable():
    from . import data, inference, modeling  # noqa: E402,F401  (registers everything)
    from .checkpoint import MaskFormerCheckpointer  # noqa: E402
    from .config import add_maskformer_config  # noqa: E402
    from .engine.predictor import MaskFormerPredictor  # noqa: E402
    from .modeling import MaskFormer  # noqa: E402

__all__ = [
    "add_maskformer_config",
    "MaskFormer",
    "MaskFormerPredictor",
    "MaskFormerCheckpointer",
    "MissingDependencyError",
    "__version__",
]
