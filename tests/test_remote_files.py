"""Remote files land only in the download cache, under a name the URL cannot steer.

Specification of :mod:`maskformer_d2.checkpoint.remote`, the one downloader (``MODEL.WEIGHTS`` URLs and, when
allowed, ``_BASE_`` URLs): only http(s) is fetched, a ``..`` segment (also percent-encoded) is
refused before any request, a redirect to another scheme is refused, the size is capped, a failed
download leaves nothing behind, a finished one is reused. A local ``http.server`` on 127.0.0.1 plays
the remote side; HOME and the cache folders point into ``tmp_path`` so that a file written anywhere
else would show.
"""
import contextlib
import http.server
import io
import re
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
import torch
from _hostile import assert_refused, files_under, run_hostile
from _tiny_maskformer import tiny_cfg

from maskformer_d2.checkpoint import MaskFormerCheckpointer
from maskformer_d2.checkpoint.remote import CACHE_ENV, MAX_DOWNLOAD_ENV, cached_name, download, resolve_url
from maskformer_d2.errors import DownloadError

REPO = Path(__file__).resolve().parents[1]
# route -> (status, headers, body); a body of None with Content-Length sends nothing (a cut-off)
Routes = Dict[str, Tuple[int, Dict[str, str], bytes]]


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: Routes = {}
    requests: List[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not here"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers and "X-No-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving(routes: Routes) -> Iterator[Tuple[str, List[str]]]:
    """An HTTP server on 127.0.0.1 answering ``routes``: ``(base URL, paths requested)``."""
    handler = type("Handler", (_Handler,), {"routes": routes, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Dict[str, Path]:
    """HOME, the download cache and iopath's cache inside ``tmp_path``; no proxy for 127.0.0.1."""
    folders = {name: tmp_path / name for name in ("home", "cache", "iopath")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("HOME", str(folders["home"]))
    monkeypatch.setenv(CACHE_ENV, str(folders["cache"]))
    monkeypatch.setenv("FVCORE_CACHE", str(folders["iopath"]))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", MAX_DOWNLOAD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    folders["root"] = tmp_path
    folders["downloads"] = folders["cache"] / "downloads"
    return folders


def _only_in_downloads(folders: Dict[str, Path], allowed: Tuple[str, ...] = ("cache/downloads/",)) -> List[str]:
    """The files of the download folder, failing the test if a file under tmp_path is elsewhere
    (outside ``allowed`` prefixes)."""
    outside = [p for p in files_under(folders["root"])
               if (folders["root"] / p).is_file() and not p.startswith(allowed)]
    assert outside == [], outside
    return sorted(files_under(folders["downloads"])) if folders["downloads"].exists() else []


def _checkpoint_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- names and URLs
def test_cache_names_come_from_a_hash_and_the_sanitised_last_segment():
    name = cached_name("https://host/a/b/model_final.pkl")
    assert re.fullmatch(r"[0-9a-f]{16}-model_final\.pkl", name)
    assert cached_name("https://host/x/model.pkl") != cached_name("https://host/y/model.pkl")
    assert cached_name("https://host/a/..%2F..%2F.bashrc").endswith("-bashrc")  # never hidden
    assert cached_name("https://host/a/..%2F..%2Fevil.pth").endswith("-evil.pth")
    assert cached_name("https://host/%2e%2e%5cevil.pth").endswith("-evil.pth")
    assert cached_name("https://host/a b;c.safetensors").endswith("-a_b_c.safetensors")
    assert cached_name("https://host/").endswith("-download")
    assert len(cached_name("https://host/" + "x" * 5000 + ".pth")) == 16 + 1 + 80


def test_detectron2_model_zoo_urls_resolve_to_its_server():
    assert resolve_url("detectron2://ImageNetPretrained/torchvision/R-50.pkl") == \
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"


@pytest.mark.parametrize("url, reason", [
    ("ftp://127.0.0.1/model.pth", "only http(s) URLs"),
    ("file:///etc/passwd", "only http(s) URLs"),
    ("s3://bucket/model.pth", "only http(s) URLs"),
    ("http://127.0.0.1/a/../../../site-packages/evil.pth", "'..' path segment"),
    ("http://127.0.0.1/a/%2e%2e/%2E%2E/evil.pth", "'..' path segment"),
    ("http://127.0.0.1/a/.%2e/evil.pth", "'..' path segment"),
    ("http://127.0.0.1/a/%252e%252e/evil.pth", "'..' path segment"),
    ("http://127.0.0.1/a/..%5cevil.pth", "'..' path segment"),
    ("detectron2://../../evil.pth", "'..' path segment"),
    ("http:///model.pth", "names no host"),
])
def test_urls_that_could_steer_the_file_are_refused_before_any_request(isolated, url, reason):
    with serving({}) as (_, requests), pytest.raises(DownloadError) as e:
        download(url, what="checkpoint")
    message = str(e.value)
    assert message.startswith("checkpoint ") and ": refused: " in message and reason in message
    assert "\n" not in message and requests == []
    assert _only_in_downloads(isolated) == []


# ----------------------------------------------------------------------------- downloading
def test_a_download_lands_in_the_cache_and_is_reused(isolated):
    body = b"weights" * 100
    with serving({"/models/m.pth": (200, {}, body)}) as (base, requests):
        first = download(f"{base}/models/m.pth", what="checkpoint")
        again = download(f"{base}/models/m.pth", what="checkpoint")
    assert first == again and Path(first).read_bytes() == body
    assert Path(first).parent == isolated["downloads"] and first.endswith("-m.pth")
    assert requests == ["/models/m.pth"]  # the second call read the cache
    assert _only_in_downloads(isolated) == [Path(first).name]


def test_a_redirect_to_an_http_url_is_followed(isolated):
    body = b"weights"
    with serving({"/old.pth": (302, {"Location": "/new/m.pth"}, b""), "/new/m.pth": (200, {}, body)}) as (base, _):
        path = download(f"{base}/old.pth")
    assert Path(path).read_bytes() == body and path.endswith("-old.pth")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/evil.pth", "/a/%2e%2e/%2e%2e/evil.pth"])
def test_a_redirect_elsewhere_is_refused_and_leaves_nothing(isolated, target):
    with serving({"/m.pth": (302, {"Location": target}, b"")}) as (base, requests), \
            pytest.raises(DownloadError) as e:
        download(f"{base}/m.pth", what="checkpoint")
    message = str(e.value)
    assert message.startswith(f"checkpoint {base}/m.pth: refused: the server redirects to ")
    assert "\n" not in message and "root:" not in message
    assert requests == ["/m.pth"]
    assert _only_in_downloads(isolated) == []


@pytest.mark.parametrize("declared", [True, False])
def test_the_size_cap_holds_with_or_without_content_length(isolated, monkeypatch, declared):
    monkeypatch.setenv(MAX_DOWNLOAD_ENV, "1000")
    headers = {} if declared else {"X-No-Length": "1"}  # then the body ends when the server closes
    with serving({"/big.pth": (200, headers, b"x" * 5000)}) as (base, _), pytest.raises(DownloadError) as e:
        download(f"{base}/big.pth", what="checkpoint")
    expected = "has 5000 bytes, more than the limit of 1000" if declared else "is larger than the limit of 1000"
    assert f"checkpoint {base}/big.pth: refused: the file {expected} bytes (raise {MAX_DOWNLOAD_ENV}" in str(e.value)
    assert _only_in_downloads(isolated) == []  # not even the temporary file


def test_a_cut_off_download_or_an_http_error_leaves_nothing(isolated):
    routes = {"/cut.pth": (200, {"Content-Length": "1000"}, b"only this"),
              "/loop.pth": (302, {"Location": "/loop.pth"}, b"")}
    with serving(routes) as (base, _):
        with pytest.raises(DownloadError, match=r"^file .*/cut\.pth: download failed: the connection ended after "
                                                r"9 of 1000 bytes$"):
            download(f"{base}/cut.pth")
        with pytest.raises(DownloadError, match=r"^file .*/missing\.pth: download failed: HTTP 404 Not Found$"):
            download(f"{base}/missing.pth")
        with pytest.raises(DownloadError) as e:
            download(f"{base}/loop.pth")
        assert "download failed: HTTP 302" in str(e.value) and "\n" not in str(e.value)
    assert _only_in_downloads(isolated) == []


def test_a_bad_size_limit_is_named(isolated, monkeypatch):
    monkeypatch.setenv(MAX_DOWNLOAD_ENV, "lots")
    with pytest.raises(ValueError, match=f"^{MAX_DOWNLOAD_ENV}='lots': expected a positive number"):
        download("http://127.0.0.1/m.pth")


# ----------------------------------------------------------------------------- the checkpointer
def test_the_checkpointer_fetches_urls_itself_and_keeps_the_query_options(isolated):
    torch.manual_seed(0)
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with serving({"/zoo/model_final.pth": (200, {}, _checkpoint_bytes(source))}) as (base, requests):
        MaskFormerCheckpointer(target).load(f"{base}/zoo/model_final.pth?matching_heuristics=True")
    assert torch.equal(target.weight, source.weight)
    assert requests == ["/zoo/model_final.pth"]  # the query is detectron2's option, not sent
    assert [n.endswith("-model_final.pth") for n in _only_in_downloads(isolated)] == [True]
    assert files_under(isolated["iopath"]) == set()  # detectron2 / iopath downloaded nothing


def test_the_checkpointer_refuses_a_url_with_dot_segments_before_writing(isolated):
    with serving({}) as (base, requests), pytest.raises(DownloadError) as e:
        MaskFormerCheckpointer(torch.nn.Linear(3, 2)).load(f"{base}/a/%2e%2e/%2e%2e/home/.local/evil.pth")
    assert str(e.value) == (f"checkpoint {base}/a/%2e%2e/%2e%2e/home/.local/evil.pth: refused: the URL has a "
                            "'..' path segment")
    assert requests == [] and _only_in_downloads(isolated) == []


@pytest.mark.slow
def test_train_net_refuses_a_planting_url_in_one_line(isolated):
    """The attack of the probe, end to end: MODEL.WEIGHTS aiming a download at site-packages."""
    cfg = tiny_cfg()
    cfg.OUTPUT_DIR = str(isolated["root"] / "out")
    cfg.DATASETS.SHAPES.NUM_TRAIN, cfg.DATASETS.SHAPES.NUM_VAL, cfg.DATASETS.SHAPES.IMAGE_SIZE = 4, 2, 64
    config = isolated["root"] / "config.yaml"
    config.write_text(cfg.dump())
    env = {"HOME": str(isolated["home"]), CACHE_ENV: str(isolated["cache"]),
           "FVCORE_CACHE": str(isolated["iopath"]), "no_proxy": "*"}
    with serving({}) as (base, requests):
        url = f"{base}/x/..%2F..%2F..%2F..%2Flib/python3.11/site-packages/evil.pth"
        outcome = run_hostile(["train_net.py", "--config-file", config, "--eval-only", "MODEL.WEIGHTS", url],
                              env=env)
    assert_refused(outcome, f"train_net: error: MODEL.WEIGHTS {url}: refused: the URL has a '..' path segment")
    assert requests == []
    assert _only_in_downloads(isolated, allowed=("config.yaml", "home/.cache/matplotlib/")) == []
