"""The one image reader of maskformer_d2: dataset mappers, the predictor, the demo and test-time
augmentation all read images and label files through :func:`read_image`, and every problem with
a file is one :class:`~maskformer_d2.errors.ImageReadError` line naming it.

Image files are untrusted input, so reading one is bounded before anything is decoded:

* only a regular file is opened (:func:`check_regular_file`): a FIFO would block the reader
  forever and a device (``/dev/zero``) never ends;
* the size in the file's header is checked against a pixel budget (:func:`max_image_pixels`:
  ``MASKFORMER_D2_MAX_IMAGE_PIXELS``, by default 4096 x 4096, which fits a 4K photo) before
  decoding: a few kilobytes of PNG can declare 25 megapixels and decode to gigabytes. PIL's own
  decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is raised to the budget when the
  budget is larger, so that PIL never refuses an image the budget allows, and its warning is
  silenced here because the budget check refuses such images in its own words.
"""
import os
import stat
import warnings
from typing import Optional, Type

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError

__all__ = [
    "ImageReadError",
    "read_image",
    "check_regular_file",
    "check_pixel_budget",
    "max_image_pixels",
    "MAX_IMAGE_PIXELS_ENV",
    "DEFAULT_MAX_IMAGE_PIXELS",
]

#: the environment variable that sets the pixel budget of every image read
MAX_IMAGE_PIXELS_ENV = "MASKFORMER_D2_MAX_IMAGE_PIXELS"
#: the pixel budget without it: a 4096 x 4096 image (16.8 megapixels, a 4K photo fits)
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096

_FORMATS = ("BGR", "RGB", None)
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def max_image_pixels() -> int:
    """The most pixels (width x height) an image file may declare: ``MASKFORMER_D2_MAX_IMAGE_PIXELS``
    when set, else :data:`DEFAULT_MAX_IMAGE_PIXELS`.

    Raises:
        ValueError: the variable is not a positive whole number (one line naming it).
    """
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        budget = int(value.replace("_", ""))
    except ValueError:
        budget = 0
    if budget <= 0:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV}={value}: not a positive whole number of pixels "
                         f"(e.g. {DEFAULT_MAX_IMAGE_PIXELS} for 4096x4096)")
    return budget


def _kind(mode: int) -> str:
    return next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a regular file")


def check_regular_file(path: str, name: str, error: Type[Exception] = ImageReadError) -> os.stat_result:
    """``path``'s ``os.stat`` when it is a regular file (symlinks followed), else ``error`` with
    one line: ``"<name>: no such file"`` or ``"<name>: is a FIFO, not a regular file"``.

    Checked before opening, since opening a FIFO blocks until a writer comes and a device never
    ends.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except OSError as e:
        raise error(f"{name}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{name}: is {_kind(st.st_mode)}, not a regular file")
    return st


def _open_regular(path: str, name: str) -> int:
    """A read-only descriptor of ``path``, refused unless it is a regular file: checked before
    opening, and again on what was opened (the path may have been swapped in between);
    ``O_NONBLOCK`` keeps a FIFO swapped in from blocking the ``open`` itself."""
    check_regular_file(path, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageReadError(f"{name}: cannot be read ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageReadError(f"{name}: is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    return fd


def _allow_in_pil(budget: int) -> None:
    """Raise PIL's own decompression-bomb limit to ``budget`` if it is lower, so that PIL refuses
    nothing the budget allows (PIL raises at twice its limit, ours is checked first)."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < budget:
        Image.MAX_IMAGE_PIXELS = budget


def check_pixel_budget(name: str, width: int, height: int, max_pixels: Optional[int] = None,
                       what: str = "image") -> None:
    """Refuse a ``width`` x ``height`` image (``what="frames"``: a video's frames) that file
    ``name`` declares when it is over ``max_pixels`` (None: :func:`max_image_pixels`), before it
    is decoded.

    Raises:
        ImageReadError: one line with the file, its size, the limit and the knob that raises it.
    """
    budget = max_image_pixels() if max_pixels is None else max_pixels
    if width * height > budget:
        raise ImageReadError(
            f"{name}: {width}x{height} {what} ({width * height / 1e6:.1f} megapixels), over the limit "
            f"of {budget} pixels ({budget / 1e6:.1f} megapixels); if you trust it, set "
            f"{MAX_IMAGE_PIXELS_ENV}={width * height} or more")


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


def read_image(path: str, format: Optional[str] = "BGR", what: str = "image",
               max_pixels: Optional[int] = None) -> np.ndarray:
    """Read an image or label file.

    Args:
        path: the file.
        format: "BGR" or "RGB": (H, W, 3) uint8; grayscale is repeated to 3 channels, alpha is
            dropped, 16-bit images are scaled to 8 bits (65535 -> 255). None: the stored values
            ((H, W) in the file's dtype for label maps), as detectron2's ``read_image`` returns them.
            EXIF orientation is applied in both cases (as detectron2 does).
        what: what the file is ("semantic label", ...), named before the path in the message;
            images are named by their path alone.
        max_pixels: the most pixels the file may declare (None: :func:`max_image_pixels`).

    Raises:
        ImageReadError: missing file, not a regular file, not an image, over the pixel budget,
            corrupt or truncated data; one line naming ``path``.
        ValueError: ``MASKFORMER_D2_MAX_IMAGE_PIXELS`` is not a number.
    """
    if format not in _FORMATS:
        raise ValueError(f"read_image: format must be 'BGR', 'RGB' or None, got {format!r}")
    budget = max_image_pixels() if max_pixels is None else max_pixels
    name = str(path) if what == "image" else f"{what} {path}"
    _allow_in_pil(budget)
    with os.fdopen(_open_regular(str(path), name), "rb") as f:
        try:
            with warnings.catch_warnings():  # PIL's bomb warning: the budget below speaks instead
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(f)  # reads the header only
            with img:
                check_pixel_budget(name, *img.size, budget)
                img.load()  # decodes everything now, so truncated files fail here
                return _decode(ImageOps.exif_transpose(img), format)
        except ImageReadError:
            raise
        except UnidentifiedImageError:
            raise ImageReadError(f"{name}: not an image file (cannot identify its format)") from None
        except Image.DecompressionBombError as e:  # over twice PIL's limit, which we do not lower
            raise ImageReadError(f"{name}: image too large ({e}); {MAX_IMAGE_PIXELS_ENV} sets the "
                                 "limit") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from None
