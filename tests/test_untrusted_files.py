"""Untrusted checkpoint files never run code, and interrupted saves never destroy a checkpoint.

A malicious pickle here is a ``__reduce__`` that creates a marker file: the marker must not
appear unless full pickle is allowed explicitly (``--allow-unsafe-pickle`` /
``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``), which is then the only door.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_maskformer import tiny_cfg
from detectron2.modeling import build_model

from maskformer_d2.checkpoint import MaskFormerCheckpointer
from maskformer_d2.checkpoint.atomic import leftovers_of_dead_writers, write_atomically
from maskformer_d2.checkpoint.safe_load import UNSAFE_PICKLE_ENV
from maskformer_d2.engine.solver import build_lr_scheduler, build_optimizer
from maskformer_d2.errors import CheckpointReadError, UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[1]


class _Marker:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch '{self.path}'",)


def _evil_files(folder: Path, state) -> dict:
    """An evil .pkl (model-zoo shaped) and .pth (torch.save) whose loading touches a marker."""
    marker = folder / "MARKER"
    pkl, pth = folder / "evil.pkl", folder / "evil.pth"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "x",
                     "payload": _Marker(marker)}, f)
    torch.save({"model": state, "payload": _Marker(marker)}, pth)
    return {"marker": marker, "pkl": pkl, "pth": pth}


@pytest.fixture(scope="module")
def model_and_state():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def evil(tmp_path, model_and_state, monkeypatch):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)
    return _evil_files(tmp_path, model_and_state[1])


# ----------------------------------------------------------------------------- the checkpointer
@pytest.mark.parametrize("kind", ["pkl", "pth"])
def test_checkpointer_refuses_code_in_a_checkpoint(evil, model_and_state, kind):
    with pytest.raises(UnsafeCheckpointError) as err:
        MaskFormerCheckpointer(model_and_state[0]).load(str(evil[kind]))
    message = str(err.value)
    assert "\n" not in message and f"evil.{kind}: refused to unpickle posix.system" in message
    assert "--allow-unsafe-pickle" in message and UNSAFE_PICKLE_ENV in message
    assert not evil["marker"].exists()


def test_the_explicit_switch_is_the_only_door(evil, model_and_state, monkeypatch):
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")
    MaskFormerCheckpointer(model_and_state[0]).load(str(evil["pth"]))
    assert evil["marker"].exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_model_zoo_pkl_of_numpy_arrays_loads_without_the_switch(tmp_path, model_and_state, monkeypatch, protocol):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)
    model, state = model_and_state
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() + 1 for k, v in state.items()}, "__author__": "official",
                     "matching_heuristics": False, "meta": np.float32(0.5)}, f, protocol=protocol)
    fresh = build_model(tiny_cfg())
    MaskFormerCheckpointer(fresh).load(str(path))
    assert torch.equal(fresh.state_dict()["backbone.stem.conv1.weight"], state["backbone.stem.conv1.weight"] + 1)


def test_trainer_checkpoints_with_resume_state_load_without_the_switch(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)
    cfg = tiny_cfg()
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():  # one step, so that the optimizer has state to save
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler = build_lr_scheduler(cfg, optimizer)
    ckpt = MaskFormerCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    ckpt.save("model_0000009", iteration=9)
    fresh = build_model(cfg)
    fresh_optimizer = build_optimizer(cfg, fresh)
    again = MaskFormerCheckpointer(fresh, str(tmp_path), optimizer=fresh_optimizer,
                                   scheduler=build_lr_scheduler(cfg, fresh_optimizer))
    extra = again.resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    key = "backbone.stem.conv1.weight"
    assert torch.equal(fresh.state_dict()[key], model.state_dict()[key])
    assert len(fresh_optimizer.state) == len(optimizer.state) > 0


# ----------------------------------------------------------------------------- command lines
def _tiny_config(folder: Path, weights: Path) -> Path:
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.OUTPUT_DIR = str(folder / "out")
    cfg.DATASETS.SHAPES.ROOT = str(folder / "cache")  # a small copy of the built-in dataset
    cfg.DATASETS.SHAPES.NUM_TRAIN, cfg.DATASETS.SHAPES.NUM_VAL, cfg.DATASETS.SHAPES.IMAGE_SIZE = 4, 2, 64
    path = folder / "config.yaml"
    path.write_text(cfg.dump())
    return path


def _run(*args, env=None):
    env = {k: v for k, v in (env or os.environ).items() if k not in ("DISPLAY", UNSAFE_PICKLE_ENV)}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pkl", "pth"])
def test_demo_and_train_net_refuse_code_in_a_checkpoint(evil, tmp_path, kind):
    config = _tiny_config(tmp_path, evil[kind])
    image = tmp_path / "image.png"
    image.write_bytes((REPO / "docs" / "demo_shapes_val_all.png").read_bytes())
    runs = {
        "demo": _run("demo/demo.py", "--config-file", config, "--input", image, "--output", tmp_path / "vis"),
        "train_net": _run("train_net.py", "--config-file", config, "--eval-only"),
    }
    for name, proc in runs.items():
        assert proc.returncode == 1, (name, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        assert f"evil.{kind}: refused to unpickle posix.system" in last and "--allow-unsafe-pickle" in last, name
    assert not evil["marker"].exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["demo", "train_net"])
def test_with_the_flag_the_same_pth_loads(evil, tmp_path, tool):
    config = _tiny_config(tmp_path, evil["pth"])
    image = tmp_path / "image.png"
    image.write_bytes((REPO / "docs" / "demo_shapes_val_all.png").read_bytes())
    if tool == "demo":
        proc = _run("demo/demo.py", "--config-file", config, "--input", image, "--output", tmp_path / "vis",
                    "--allow-unsafe-pickle")
    else:
        proc = _run("train_net.py", "--config-file", config, "--eval-only", "--allow-unsafe-pickle")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert evil["marker"].exists()


# ----------------------------------------------------------------------------- writing
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"complete old checkpoint")

    def half_then_fail(f):
        f.write(b"half of a new one")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(path), half_then_fail)
    assert path.read_bytes() == b"complete old checkpoint"
    assert os.listdir(tmp_path) == ["model_final.pth"]


def test_leftovers_of_killed_writers_are_removed(tmp_path, model_and_state):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".model_0000009.pth.tmp-{dead}").write_bytes(b"half")
    (tmp_path / f".model_0000019.pth.tmp-{os.getpid()}").write_bytes(b"being written")
    assert leftovers_of_dead_writers(str(tmp_path)) == [f".model_0000009.pth.tmp-{dead}"]
    MaskFormerCheckpointer(model_and_state[0], str(tmp_path)).save("model_0000029")  # a save removes them
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f".model_0000019.pth.tmp-{os.getpid()}", "last_checkpoint", "model_0000029.pth"])


# ----------------------------------------------------------------------------- resuming
def _checkpoints(tmp_path, model):
    ckpt = MaskFormerCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    os.utime(tmp_path / "model_0000009.pth", (1, 1))  # older
    ckpt.save("model_0000019", iteration=19)
    return ckpt


def test_resume_falls_back_from_a_truncated_last_checkpoint(tmp_path, model_and_state, caplog):
    ckpt = _checkpoints(tmp_path, model_and_state[0])
    data = (tmp_path / "model_0000019.pth").read_bytes()
    (tmp_path / "model_0000019.pth").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="maskformer_d2.checkpoint"):
        extra = ckpt.resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    assert "resumed from" in caplog.text and "model_0000009.pth instead of" in caplog.text
    assert "model_0000019.pth, which is unreadable" in caplog.text


def test_resume_falls_back_from_a_dangling_last_checkpoint(tmp_path, model_and_state, caplog):
    ckpt = _checkpoints(tmp_path, model_and_state[0])
    (tmp_path / "model_0000019.pth").unlink()
    with caplog.at_level("WARNING", logger="maskformer_d2.checkpoint"):
        extra = ckpt.resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    assert "last_checkpoint names model_0000019.pth, which is missing" in caplog.text


def test_resume_with_no_readable_checkpoint_is_one_line(tmp_path, model_and_state):
    (tmp_path / "model_0000009.pth").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    expected = r"^--resume: no readable checkpoint in .* \(1 tried: model_0000009\.pth\)"
    with pytest.raises(CheckpointReadError, match=expected):
        MaskFormerCheckpointer(model_and_state[0], str(tmp_path)).resume_or_load("", resume=True)


# ----------------------------------------------------------------------------- messages
def test_messages_name_the_problem(tmp_path, model_and_state):
    model = model_and_state[0]
    expected = r"checkpoint .*: is a directory, not a checkpoint file; set MODEL\.WEIGHTS"
    with pytest.raises(FileNotFoundError, match=expected):
        MaskFormerCheckpointer(model).load(str(tmp_path))
    truncated = tmp_path / "t.pth"
    torch.save({"model": model.state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(CheckpointReadError) as err:
        MaskFormerCheckpointer(model).load(str(truncated))
    assert str(err.value).endswith("not a readable .pth/.pkl checkpoint (truncated or corrupt: BadZipFile)")
