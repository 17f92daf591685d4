"""Untrusted images, exported models and written files (issue #20): every hostile input is one
readable line and a non-zero exit, bounded in time and memory, and writes nothing it should not.

* A TorchScript file is a program (its ``__setstate__`` runs on load): loading one needs the
  opt-in of code-carrying checkpoints. The hostile file here overwrites a "victim" file through
  ``torch.from_file`` when loaded; the victim must stay intact unless the opt-in is given.
* An image is checked before decoding: a regular file (a FIFO would block the reader forever),
  whose header declares at most the pixel budget (a few KB of PNG can declare 25 megapixels).
* An exported ONNX file's external data must be a byte range of a regular file in its folder.
* Files are written through a fresh temporary file (never a name planted in advance) renamed into
  place, with the mode a plain ``open`` gives.
"""
import importlib.util
import os
import re
import signal
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Tuple

import numpy as np
import onnx
import pytest
import torch
from _hostile import assert_refused, files_under, run_hostile
from _tiny_maskformer import tiny_cfg
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from onnx import TensorProto, helper
from PIL import Image

from maskformer_d2.checkpoint.atomic import TEMPORARY_FILE, write_atomically
from maskformer_d2.checkpoint.safe_load import UNSAFE_PICKLE_ENV
from maskformer_d2.data.io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_IMAGE_PIXELS_ENV,
    check_pixel_budget,
    max_image_pixels,
    read_image,
)
from maskformer_d2.deploy import export_onnx, load_runtime
from maskformer_d2.deploy.runtime import check_external_data
from maskformer_d2.engine.predictor import MaskFormerPredictor
from maskformer_d2.errors import ExportError, ImageReadError

REPO = Path(__file__).resolve().parents[1]
VICTIM_TEXT = b"precious"


@contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block blocks, e.g. opening a FIFO."""
    def _expired(signum, frame):
        raise AssertionError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _no_opt_ins(monkeypatch):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)


# ----------------------------------------------------------------------------- TorchScript
class _Overwriter(torch.nn.Module):
    """Loading its TorchScript (``__setstate__``) overwrites the file ``victim`` with b"X"s."""

    def __init__(self, victim: str):
        super().__init__()
        self.victim = victim
        self.x = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool, str]:
        return self.x, self.training, self.victim

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool, str]) -> None:
        self.training = state[1]
        self.victim = state[2]
        self.x = torch.from_file(state[2], shared=True, size=8, dtype=torch.uint8).fill_(88).float()

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return images, images


@pytest.fixture
def evil_ts(tmp_path) -> Tuple[Path, Path]:
    """(a TorchScript file that overwrites the victim when loaded, the victim)."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM_TEXT)
    path = tmp_path / "evil.ts"
    torch.jit.save(torch.jit.script(_Overwriter(str(victim))), str(path))
    assert victim.read_bytes() == VICTIM_TEXT
    return path, victim


def test_torchscript_is_refused_without_the_opt_in(evil_ts):
    path, victim = evil_ts
    with pytest.raises(ExportError) as err:
        load_runtime(str(path))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: refused to load TorchScript (")
    assert "--allow-unsafe-pickle" in message and f"{UNSAFE_PICKLE_ENV}=1" in message
    assert victim.read_bytes() == VICTIM_TEXT


def test_the_predictor_refuses_torchscript_too(evil_ts):
    path, victim = evil_ts
    with pytest.raises(ExportError, match="refused to load TorchScript"):
        MaskFormerPredictor(tiny_cfg(), exported=str(path))
    assert victim.read_bytes() == VICTIM_TEXT


def test_the_opt_in_is_the_only_door(evil_ts, monkeypatch):
    """The same file, with the opt-in, is loaded: and its code runs (which is why it needs one)."""
    path, victim = evil_ts
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")
    load_runtime(str(path))
    assert victim.read_bytes() == b"X" * 8


# ----------------------------------------------------------------------------- images
def _png(path: Path, width: int, height: int) -> Path:
    """A 1-bit PNG: 5000 x 5000 of them is a few KB on disk, 75 MB once decoded to RGB."""
    Image.new("1", (width, height)).save(path)
    return path


def test_an_image_over_the_pixel_budget_is_refused_from_its_header(tmp_path):
    path = _png(tmp_path / "bomb.png", 5000, 5000)
    assert path.stat().st_size < 100_000
    start = time.monotonic()
    with pytest.raises(ImageReadError) as err:
        read_image(str(path))
    assert time.monotonic() - start < 2
    assert str(err.value) == (
        f"{path}: 5000x5000 image (25.0 megapixels), over the limit of 16777216 pixels (16.8 "
        f"megapixels); if you trust it, set {MAX_IMAGE_PIXELS_ENV}=25000000 or more")
    with pytest.raises(ImageReadError, match=r"^semantic label .*bomb\.png: 5000x5000 image"):
        read_image(str(path), None, "semantic label")


def test_the_pixel_budget_is_4096_squared_and_set_by_the_environment(tmp_path, monkeypatch):
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 4096 * 4096
    check_pixel_budget("photo.jpg", 4096, 4096)  # a 4K photo fits
    with pytest.raises(ImageReadError, match=r"photo\.jpg: 4097x4096 image"):
        check_pixel_budget("photo.jpg", 4097, 4096)
    path = _png(tmp_path / "small.png", 20, 10)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "199")
    expected = rf"20x10 image .* over the limit of 199 pixels.*{MAX_IMAGE_PIXELS_ENV}=200 or more$"
    with pytest.raises(ImageReadError, match=expected):
        read_image(str(path))
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "200")
    assert read_image(str(path)).shape == (10, 20, 3)
    assert read_image(str(path), max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(ImageReadError, match="over the limit of 199 pixels"):
        read_image(str(path), max_pixels=199)
    for bad in ("lots", "0", "-5"):
        monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, bad)
        with pytest.raises(ValueError, match=rf"^{MAX_IMAGE_PIXELS_ENV}={bad}: not a positive whole number"):
            read_image(str(path))


def test_pil_never_refuses_what_the_budget_allows(tmp_path, monkeypatch):
    """PIL's own decompression-bomb limit is raised to a larger budget (never lowered)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = _png(tmp_path / "small.png", 20, 10)
    read_image(str(path))
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "100")
    with pytest.raises(ImageReadError, match="over the limit of 100 pixels"):
        read_image(str(path))
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


def test_files_that_are_not_regular_are_refused_before_opening(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    with _deadline(10):
        for path, kind in [(fifo, "a FIFO"), (link, "a FIFO"), ("/dev/zero", "a character device"),
                           (tmp_path, "a directory")]:
            with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: is {kind}, not a regular file$"):
                read_image(str(path))
        with pytest.raises(ImageReadError, match=r"panoptic label .*photo\.png: is a FIFO"):
            read_image(str(fifo), "RGB", "panoptic label")


def _load_demo_module():
    spec = importlib.util.spec_from_file_location("maskformer_demo_untrusted", REPO / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_refuses_a_fifo_video_and_config_before_opening(tmp_path, monkeypatch):
    demo = _load_demo_module()
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    args = demo.get_parser().parse_args(["--config-file", str(fifo), "--video-input", str(fifo),
                                         "--output", str(tmp_path / "out")])
    with _deadline(10):
        with pytest.raises(OSError, match=f"^{re.escape(str(fifo))}: is a FIFO, not a regular file$"):
            demo.plan(args)
        with pytest.raises(OSError, match=f"^--config-file {re.escape(str(fifo))}: is a FIFO, not a regular file$"):
            demo.setup_cfg(args)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "many")
    with pytest.raises(ValueError, match=f"^{MAX_IMAGE_PIXELS_ENV}=many"):  # before the model is built
        demo.plan(args)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- ONNX external data
def _onnx_with_external_data(folder: Path, location: str, offset: int = 0, length: int = 16,
                             in_subgraph: bool = False) -> Path:
    """A small ONNX graph whose one initializer (4 floats) lives in external file ``location``."""
    weight = TensorProto(name="weight", data_type=TensorProto.FLOAT, dims=[4],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])
    if in_subgraph:  # the initializer hides in an If branch
        branch = helper.make_graph([helper.make_node("Identity", ["weight"], ["b"])], "branch", [],
                                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])], [weight])
        cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)]
        graph = helper.make_graph(nodes, "g", [], [out], [cond])
    else:
        graph = helper.make_graph([helper.make_node("Identity", ["weight"], ["out"])], "g", [], [out], [weight])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp_path / "secret.bin").write_bytes(b"s" * 16)
    return folder


def _check(path: Path) -> None:
    check_external_data(str(path), onnx.load(str(path), load_external_data=False))


def test_external_data_inside_the_folder_passes(model_folder):
    _check(_onnx_with_external_data(model_folder, "weights.bin"))
    _check(_onnx_with_external_data(model_folder, "weights.bin", offset=8, length=8))


@pytest.mark.parametrize("location,expected", [
    ("../secret.bin", "reads its data from '../secret.bin', outside the model's folder"),
    ("/etc/hostname", "reads its data from '/etc/hostname', outside the model's folder"),
    ("link.bin", "reads its data from 'link.bin', outside the model's folder"),
    ("gone.bin", "reads its data from 'gone.bin', which is missing"),
    ("fifo.bin", "reads its data from 'fifo.bin', which is not a regular file"),
    ("sub", "reads its data from 'sub', which is not a regular file"),
])
def test_external_data_outside_the_folder_or_not_a_file_is_refused(model_folder, location, expected):
    (model_folder / "link.bin").symlink_to(model_folder.parent / "secret.bin")
    os.mkfifo(model_folder / "fifo.bin")
    (model_folder / "sub").mkdir()
    path = _onnx_with_external_data(model_folder, location)
    with pytest.raises(ExportError) as err:
        _check(path)
    assert str(err.value) == f"{path}: tensor 'weight' {expected}" + (
        "; external data must lie next to the .onnx file" if "outside" in expected else "")


def test_external_data_beyond_its_file_or_in_a_subgraph_is_refused(model_folder):
    path = _onnx_with_external_data(model_folder, "weights.bin", offset=8, length=4096)
    expected = r"tensor 'weight' reads bytes 8\.\.4104 of 'weights\.bin', which has 16 bytes$"
    with pytest.raises(ExportError, match=expected):
        _check(path)
    path = _onnx_with_external_data(model_folder, "weights.bin", offset=-4)
    with pytest.raises(ExportError, match="reads bytes -4..12 of"):
        _check(path)
    path = _onnx_with_external_data(model_folder, "../secret.bin", in_subgraph=True)
    with pytest.raises(ExportError, match="outside the model's folder"):
        _check(path)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_both_engines_check_external_data_before_reading_it(model_folder, engine):
    if engine == "openvino":
        pytest.importorskip("openvino")
    path = _onnx_with_external_data(model_folder, "../secret.bin")
    expected = r"^.*model\.onnx: tensor 'weight' reads its data from '\.\./secret\.bin', outside"
    with pytest.raises(ExportError, match=expected):
        load_runtime(str(path), engine=engine)


# ----------------------------------------------------------------------------- writing files
def test_a_symlink_planted_at_the_old_temporary_name_or_the_target_redirects_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"not yours")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".model.pth.tmp-{os.getpid()}").symlink_to(elsewhere)  # the name it used to write to
    (out / "last_checkpoint").symlink_to(elsewhere)
    write_atomically(str(out / "model.pth"), lambda f: f.write(b"new model"))
    write_atomically(str(out / "last_checkpoint"), lambda f: f.write(b"model.pth"))
    assert elsewhere.read_bytes() == b"not yours"
    assert (out / "model.pth").read_bytes() == b"new model"
    assert not (out / "last_checkpoint").is_symlink() and (out / "last_checkpoint").read_bytes() == b"model.pth"


def test_the_temporary_file_names_its_writer_and_the_result_has_open_s_mode(tmp_path):
    seen = []

    def write(f):
        seen.extend(name for name in os.listdir(tmp_path) if name != "kept.bin")
        f.write(b"data")

    old = os.umask(0o027)
    try:
        write_atomically(str(tmp_path / "new.bin"), write)
        (tmp_path / "kept.bin").write_bytes(b"old")
        os.chmod(tmp_path / "kept.bin", 0o604)
        write_atomically(str(tmp_path / "kept.bin"), lambda f: f.write(b"new"))
    finally:
        os.umask(old)
    (name,) = seen
    match = TEMPORARY_FILE.fullmatch(name)  # so a killed writer's file is found and removed
    assert match and match.group(1) == str(os.getpid()) and name.startswith(".new.bin.")
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640  # 0o666 less the umask
    assert stat.S_IMODE((tmp_path / "kept.bin").stat().st_mode) == 0o604  # an existing file keeps its own
    assert sorted(os.listdir(tmp_path)) == ["kept.bin", "new.bin"]


def test_a_failed_onnx_export_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    model = build_model(tiny_cfg()).eval()
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous export")

    def half_then_fail(model, args, f, **kwargs):
        f.write(b"half a graph")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", half_then_fail)
    with pytest.raises(ExportError, match=r"^ONNX export failed \(RuntimeError\): exporter crashed$"):
        export_onnx(model, str(path))
    assert path.read_bytes() == b"the previous export" and os.listdir(tmp_path) == ["model.onnx"]


def test_export_model_writes_nothing_when_the_config_cannot_be_dumped(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_cfg().dump())
    spec = importlib.util.spec_from_file_location("export_model", REPO / "tools" / "deploy" / "export_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def no_dump(self, **kwargs):
        raise TypeError("cannot represent an object")

    monkeypatch.setattr(CfgNode, "dump", no_dump)
    out = tmp_path / "out"
    assert tool.main(["--config-file", str(config), "--output", str(out)]) == 1
    assert capsys.readouterr().err.strip() == "export_model: error: cannot represent an object"
    assert not out.exists()


# ----------------------------------------------------------------------------- end to end
def _demo_setup(folder: Path) -> Path:
    """A tiny random-weight config (no weights file) and one good image."""
    config = folder / "config.yaml"
    config.write_text(tiny_cfg().dump())
    Image.new("RGB", (64, 48), (120, 30, 200)).save(folder / "good.png")
    return config


@pytest.mark.slow
def test_demo_refuses_a_torchscript_model_end_to_end(evil_ts, tmp_path):
    path, victim = evil_ts
    config = _demo_setup(tmp_path)
    out = tmp_path / "vis"
    outcome = run_hostile(["demo/demo.py", "--config-file", config, "--input", tmp_path / "good.png",
                           "--output", out, "--onnx", path])
    assert_refused(outcome, f"error: {path}: refused to load TorchScript", "--allow-unsafe-pickle")
    assert outcome.returncode == 1 and victim.read_bytes() == VICTIM_TEXT
    assert files_under(out) == set()


@pytest.mark.slow
def test_demo_refuses_a_5000x5000_png_within_seconds(tmp_path):
    config = _demo_setup(tmp_path)
    bomb = _png(tmp_path / "bomb.png", 5000, 5000)
    out = tmp_path / "vis"
    outcome = run_hostile(["demo/demo.py", "--config-file", config, "--input", bomb, "--output", out])
    assert_refused(outcome, f"error: {bomb}: 5000x5000 image (25.0 megapixels), over the limit",
                   f"{MAX_IMAGE_PIXELS_ENV}=25000000")
    assert outcome.returncode == 1 and outcome.peak_rss_bytes < 2 * 1024**3
    assert files_under(out) == set()


def test_demo_refuses_a_fifo_input_without_blocking(tmp_path):
    config = _demo_setup(tmp_path)
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    out = tmp_path / "vis"
    outcome = run_hostile(["demo/demo.py", "--config-file", config, "--input", fifo, "--output", out])
    assert_refused(outcome, f"error: {fifo}: is a FIFO, not a regular file")
    assert outcome.returncode == 1
    assert not out.exists() or files_under(out) == set()
