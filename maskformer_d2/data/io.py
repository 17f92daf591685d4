"""The one image reader of maskformer_d2: dataset mappers, the predictor, the demo and test-time
augmentation all read images and label files through :func:`read_image`, and every problem with
a file is one :class:`~maskformer_d2.errors.ImageReadError` line naming it."""
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError

__all__ = ["ImageReadError", "read_image"]

_FORMATS = ("BGR", "RGB", None)
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a decoded high-bit-depth / float array to 0..255 uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return np.round(array.astype(np.float64) / 257.0).clip(0, 255).astype(np.uint8)  # 65535 -> 255
    if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
        array = array * 255.0
    return np.round(array.astype(np.float64)).clip(0, 255).astype(np.uint8)


def _decode(img: Image.Image, format: Optional[str]) -> np.ndarray:
    if format is None:  # a label file: its values as stored
        return np.asarray(img)
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        gray = _to_uint8(np.asarray(img))
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(np.asarray(img.convert("RGB")))
    return rgb[:, :, ::-1].copy() if format == "BGR" else rgb


def read_image(path: str, format: Optional[str] = "BGR", what: str = "image") -> np.ndarray:
    """Read an image or label file.

    Args:
        path: the file.
        format: "BGR" or "RGB": (H, W, 3) uint8; grayscale is repeated to 3 channels, alpha is
            dropped, 16-bit images are scaled to 8 bits (65535 -> 255). None: the stored values
            ((H, W) in the file's dtype for label maps), as detectron2's ``read_image`` returns them.
            EXIF orientation is applied in both cases (as detectron2 does).
        what: what the file is ("semantic label", ...), named before the path in the message;
            images are named by their path alone.

    Raises:
        ImageReadError: missing file, not an image, corrupt or truncated data; one line naming
            ``path``.
    """
    if format not in _FORMATS:
        raise ValueError(f"read_image: format must be 'BGR', 'RGB' or None, got {format!r}")
    name = str(path) if what == "image" else f"{what} {path}"
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything now, so truncated files fail here
            return _decode(ImageOps.exif_transpose(img), format)
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file (cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from None
