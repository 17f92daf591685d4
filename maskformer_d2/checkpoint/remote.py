"""The one downloader of maskformer_d2: remote checkpoints (``MODEL.WEIGHTS``) and, when allowed,
remote base configs (``_BASE_``).

detectron2 / iopath cache a URL under a path built from the URL's own path segments, so a URL with
``..`` segments writes wherever its author wants. Here the URL only ever *names* a file, it never
*places* one:

* only ``http://`` and ``https://`` URLs are fetched (``detectron2://X`` is detectron2's model zoo,
  ``https://dl.fbaipublicfiles.com/detectron2/X``); a URL with a ``..`` segment (also
  percent-encoded) is refused before any request, and so is a redirect to anything but such a URL
  (urllib would follow one to ``ftp://``; the opener here has no handler for other schemes at all);
* the file lands in one cache folder, under ``<sha256 of the URL>-<last path segment, sanitised>``:
  the extension still tells the checkpoint reader what the file is (``.pkl``/``.pth``/
  ``.safetensors``/``.yaml``), nothing else of the URL reaches the file system;
* the size is capped (``Content-Length`` is checked before reading, the bytes while reading);
* the file is written atomically (a temporary file in the cache folder, renamed when complete), so
  a failed or refused download leaves nothing under the final name, and a complete one is reused.

Knobs: ``MASKFORMER_D2_CACHE`` (the cache is ``$MASKFORMER_D2_CACHE/downloads``, else the iopath
cache folder's ``maskformer_d2`` subfolder), ``MASKFORMER_D2_MAX_DOWNLOAD_BYTES`` (default 4 GiB),
``MASKFORMER_D2_DOWNLOAD_TIMEOUT`` (seconds a connection may stay silent, default 60).
"""
import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import urllib.error
import urllib.request
from typing import BinaryIO, Callable, Optional
from urllib.parse import unquote, urljoin, urlsplit

from ..errors import DownloadError, first_line
from .atomic import leftovers_of_dead_writers, write_atomically

__all__ = [
    "CACHE_ENV",
    "MAX_DOWNLOAD_ENV",
    "TIMEOUT_ENV",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "is_url",
    "resolve_url",
    "download_dir",
    "cached_name",
    "download",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "MASKFORMER_D2_CACHE"
MAX_DOWNLOAD_ENV = "MASKFORMER_D2_MAX_DOWNLOAD_BYTES"
TIMEOUT_ENV = "MASKFORMER_D2_DOWNLOAD_TIMEOUT"
DEFAULT_MAX_DOWNLOAD_BYTES = 4 * 1024**3
DEFAULT_TIMEOUT_S = 60.0

_DETECTRON2_PREFIX = "detectron2://"  # detectron2's model zoo, as its PathManager resolves it
_DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_CHARS = 80
_MAX_REDIRECTS = 10
_CHUNK_BYTES = 1 << 20


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local file name."""
    return bool(_SCHEME.match(path))


def _shown(url: str, limit: int = 160) -> str:
    """``url`` fit for a one-line message: control characters escaped, long ones shortened."""
    text = url.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_parent_segment(path: str) -> bool:
    """Whether a URL path has a ``..`` segment, also once or twice percent-decoded (``%2e%2e``,
    ``%252e%252e``) or written with backslashes."""
    for _ in range(3):
        if any(segment == ".." for segment in re.split(r"[/\\]", path)):
            return True
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded
    return True  # still encoded after three rounds: no real checkpoint URL looks like that


def resolve_url(url: str, what: str = "file") -> str:
    """The http(s) URL to fetch for ``url`` (``detectron2://`` resolved, query and fragment kept).

    Raises :class:`DownloadError` (one line, starting with ``what`` and the URL) for another scheme
    or a ``..`` segment.
    """
    if url.startswith(_DETECTRON2_PREFIX):
        url = _DETECTRON2_URL + url[len(_DETECTRON2_PREFIX):]
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise DownloadError(f"{what} {_shown(url)}: refused: not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise DownloadError(
            f"{what} {_shown(url)}: refused: only http(s) URLs (and detectron2://) are downloaded, "
            f"not {parts.scheme or 'this'}://; download the file yourself and give its local path")
    if not parts.hostname:
        raise DownloadError(f"{what} {_shown(url)}: refused: the URL names no host")
    if _has_parent_segment(parts.path):
        raise DownloadError(f"{what} {_shown(url)}: refused: the URL has a '..' path segment")
    return url


def download_dir() -> str:
    """Where downloads go: ``$MASKFORMER_D2_CACHE/downloads``, else ``<iopath cache>/maskformer_d2``
    (``$FVCORE_CACHE`` or ``~/.torch/iopath_cache``)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return os.path.join(os.path.expanduser(root), "downloads")
    from iopath.common.file_io import get_cache_dir

    return os.path.join(get_cache_dir(), "maskformer_d2")


def cached_name(url: str) -> str:
    """The cache file name of ``url``: 16 hex digits of its sha256, then its last path segment
    reduced to ``[A-Za-z0-9._-]`` (so the extension survives; never a path, never hidden)."""
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    last = unquote(urlsplit(url).path).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME_CHARS.sub("_", last).lstrip(".")[-_MAX_NAME_CHARS:]
    return f"{digest}-{name or 'download'}"


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise ValueError(f"{name}={value!r}: expected a positive number")
    return number


def max_download_bytes() -> int:
    """``$MASKFORMER_D2_MAX_DOWNLOAD_BYTES``, else 4 GiB: the largest file :func:`download` fetches."""
    return int(_env_number(MAX_DOWNLOAD_ENV, DEFAULT_MAX_DOWNLOAD_BYTES))


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL :func:`resolve_url` accepts, at most 10 times."""

    max_redirections = _MAX_REDIRECTS

    def __init__(self, what: str, url: str):
        super().__init__()
        self._what, self._url = what, url

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri") or ""
        target = urljoin(req.full_url, target)
        try:
            resolve_url(target, "redirect")
        except DownloadError as e:
            fp.close()
            reason = str(e).split(": refused: ", 1)[-1]
            raise DownloadError(
                f"{self._what} {_shown(self._url)}: refused: the server redirects to "
                f"{_shown(target)} ({reason})") from None
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(what: str, url: str) -> urllib.request.OpenerDirector:
    """An opener that speaks http and https only (no file:, ftp:, data: handlers)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _CheckedRedirects(what, url),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _copy_capped(response: BinaryIO, f: BinaryIO, limit: int, expected: Optional[int],
                 refuse_too_big: Callable[[str], DownloadError]) -> None:
    """Copy ``response`` into ``f`` in chunks, refusing past ``limit`` bytes (whatever the server
    declared) and a body shorter than the ``expected`` (declared) length."""
    received = 0
    while True:
        chunk = response.read(_CHUNK_BYTES)
        if not chunk:
            break
        received += len(chunk)
        if received > limit:
            raise refuse_too_big("is larger than")
        f.write(chunk)
    if expected is not None and received != expected:
        raise DownloadError(f"the connection ended after {received} of {expected} bytes")


def _remove_leftovers(folder: str) -> None:
    for stale in leftovers_of_dead_writers(folder):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, stale))


def download(url: str, what: str = "file", max_bytes: Optional[int] = None) -> str:
    """The local path of ``url``'s file in the download cache, fetched first unless already there.

    Args:
        url: an ``http(s)://`` or ``detectron2://`` URL; its query is part of what is fetched (and,
            like the rest of the URL, of the cache key).
        what: what the file is, for messages ("checkpoint", "_BASE_").
        max_bytes: the largest size accepted (default: :func:`max_download_bytes`).

    Raises:
        DownloadError: one line naming ``what``, the URL and the reason (refused scheme, ``..``
            segment or redirect; too large; an HTTP or network error). Nothing is left under the
            final name then.
    """
    fetched = resolve_url(url, what)
    limit = max_download_bytes() if max_bytes is None else max_bytes
    folder = download_dir()
    path = os.path.join(folder, cached_name(fetched))
    if os.path.isfile(path):
        logger.info(f"{what} {url}: using {path}, downloaded before")
        return path
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{what} {_shown(url)}: cannot create the download folder {folder} "
                            f"({e.strerror or e}); set {CACHE_ENV} to a writable folder") from None
    _remove_leftovers(folder)
    timeout = _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)

    def too_big(size: str) -> DownloadError:  # size: "is larger than" / "has N bytes, more than"
        return DownloadError(
            f"{what} {_shown(url)}: refused: the file {size} the limit of {limit} bytes (raise "
            f"{MAX_DOWNLOAD_ENV} if it is genuine)")

    logger.info(f"{what} {url}: downloading to {path}")
    try:
        with _opener(what, url).open(urllib.request.Request(fetched), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            if expected is not None and expected > limit:
                raise too_big(f"has {expected} bytes, more than")
            if expected is not None and expected > shutil.disk_usage(folder).free:
                raise DownloadError(f"{what} {_shown(url)}: {expected} bytes do not fit in {folder} "
                                    f"({shutil.disk_usage(folder).free} bytes free); set {CACHE_ENV}")
            write_atomically(path, lambda f: _copy_capped(response, f, limit, expected, too_big))
    except DownloadError as e:
        if str(e).startswith(f"{what} "):
            raise
        raise DownloadError(f"{what} {_shown(url)}: download failed: {e}") from None
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{what} {_shown(url)}: download failed: HTTP {e.code} "
                            f"{first_line(Exception(e.reason))}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{what} {_shown(url)}: download failed: {first_line(Exception(e.reason))}") from None
    except (OSError, http.client.HTTPException, socket.timeout, ValueError) as e:
        raise DownloadError(f"{what} {_shown(url)}: download failed: "
                            f"{first_line(e) or type(e).__name__}") from None
    return path
