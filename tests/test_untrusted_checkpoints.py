"""Checkpoint readers against hostile files: no code, no memory corruption, no allocation sized by
the file beyond its budget, and one line naming the file (issue #20).

Hostile files are built here byte by byte (pickle instructions, zip records), small, in tmp_path;
the genuine ones with ``pickle.dump`` / ``torch.save`` and, for Python 2 model-zoo files, by hand.
Files that would crash or exhaust a process are only ever run in a child process (``_hostile``).
"""
import io
import json
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from _hostile import assert_refused, files_under, run_hostile
from _tiny_maskformer import tiny_cfg

from maskformer_d2.checkpoint import MaskFormerCheckpointer
from maskformer_d2.checkpoint.safe_load import (
    MAX_BYTES_ENV,
    MAX_RATIO_ENV,
    UNSAFE_PICKLE_ENV,
    checkpoint_budget,
    load_pkl,
    load_pth,
    load_safetensors,
)
from maskformer_d2.errors import CheckpointReadError, UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    for var in (UNSAFE_PICKLE_ENV, MAX_BYTES_ENV, MAX_RATIO_ENV):
        monkeypatch.delenv(var, raising=False)


# ----------------------------------------------------------------------------- pickles by hand
def _str(text: str) -> bytes:
    """A Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle protocol 2 writes it."""
    data = text.encode("latin1")
    return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))) + data


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _dtype(code: str, byteorder: str, flags: int = 0) -> bytes:
    """``numpy.dtype(code, 0, 1)`` with the BUILD state numpy writes (or forged ``flags``)."""
    return (b"cnumpy\ndtype\n" + _str(code) + b"K\x00K\x01\x87R"
            + b"(K\x03" + _str(byteorder) + b"NNN" + _int(-1) + _int(-1) + _int(flags) + b"tb")


def _array(core: str, shape: Tuple[int, ...], code: str, byteorder: str, raw: bytes, flags: int = 0) -> bytes:
    """``_reconstruct(ndarray, (0,), 'b')`` + BUILD((1, shape, dtype, False, raw)); ``ndarray`` is
    memoized once (slot 1) and fetched again, as cPickle does."""
    return (f"c{core}.multiarray\n_reconstruct\n".encode() + b"cnumpy\nndarray\nq\x01K\x00\x85" + _str("b")
            + b"\x87R(K\x01(" + b"".join(_int(d) for d in shape) + b"t" + _dtype(code, byteorder, flags)
            + b"\x89" + _str(raw.decode("latin1")) + b"tb")


def _python2_model_zoo_pickle(arrays: Dict[str, np.ndarray], iteration: float, core: str = "numpy.core") -> bytes:
    """What Detectron (Python 2, ``cPickle.dump(..., protocol=2)``) wrote: latin-1 ``str`` for keys
    and array bytes, GLOBAL instructions, a memo, a numpy float64 scalar."""
    body = b""
    for i, (key, a) in enumerate(arrays.items()):
        code, order = a.dtype.str[1:], a.dtype.str[0]
        item = _array(core, a.shape, code, order, a.tobytes())
        body += _str(key) + (item if i == 0 else item.replace(b"cnumpy\nndarray\nq\x01", b"h\x01"))
    scalar = f"c{core}.multiarray\nscalar\n".encode() + _dtype("f8", "<") + _str(
        np.float64(iteration).tobytes().decode("latin1")) + b"\x86R"
    return (b"\x80\x02}q\x00(" + _str("model") + b"}(" + body + b"u" + _str("__author__") + _str("Detectron")
            + _str("iteration") + scalar + b"u.")


def _forged_pickle(code: str, flags: int) -> bytes:
    """A model-zoo ``.pkl`` whose one array has a dtype state with forged ``flags``; with code
    "O8" and flags 1 (NPY_ITEM_REFCOUNT) numpy takes the 8 data bytes for an object pointer."""
    order = "|" if code == "O8" else "<"
    array = _array("numpy.core", (1,), code, order, b"\x41" * 8, flags)
    return b"\x80\x02}(" + _str("model") + b"}(" + _str("w") + array + b"u" + _str("__author__") + _str("x") + b"u."


def _write(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def _same(a, b) -> bool:
    """Equal values, dtype (up to byte order) and type, through dicts / lists / tuples."""
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=")
                and np.array_equal(a, b))
    return type(a) is type(b) and a == b


# ----------------------------------------------------------------------------- genuine .pkl files
def _genuine() -> dict:
    rng = np.random.default_rng(0)
    model = OrderedDict([
        ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("fc.weight", np.asfortranarray(rng.standard_normal((5, 7)))),  # float64, Fortran order
        ("bn.num_batches_tracked", np.array(12, dtype=np.int64)),
        ("big_endian", np.arange(6, dtype=">i4").reshape(2, 3)),
        ("empty", np.zeros((0, 3), dtype=np.float32)),
        ("mask", np.arange(10) % 3 == 0),
        ("half", np.linspace(0, 1, 9, dtype=np.float16)),
        ("large", rng.standard_normal(5000).astype(np.float32)),  # past numpy's in-place 1000 bytes
    ])
    return {"model": model, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True,
            "iteration": np.float64(89999.0), "step": np.int64(7), "names": ("a", "b"), "ids": {1, 2},
            "blob": b"\x00\xff", "none": None}


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_numpy_pickles_of_each_protocol_load_with_identical_values(tmp_path, protocol):
    data = pickle.dumps(_genuine(), protocol=protocol)
    loaded = load_pkl(_write(tmp_path, "model_final.pkl", data), "model_final.pkl")
    assert _same(pickle.loads(data), loaded)
    assert all(a.flags.writeable and a.dtype.isnative for a in loaded["model"].values())
    assert type(loaded["iteration"]) is np.float64 and loaded["iteration"] == 89999.0


@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])  # numpy 1 and numpy 2 module names
def test_python2_latin1_model_zoo_file_loads_as_detectron2_reads_it(tmp_path, core):
    arrays = {"conv1_w": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
              "fc1000_b": np.linspace(-1, 1, 5), "res2_0_branch1_bn_s": np.arange(3, dtype=np.int64) - 1,
              "bytes_up_to_255": np.arange(256, dtype=np.uint8)}
    data = _python2_model_zoo_pickle(arrays, 40000.0, core)
    loaded = load_pkl(_write(tmp_path, "R-50.pkl", data), "R-50.pkl")
    assert _same(pickle.loads(data, encoding="latin1"), loaded)  # what real numpy builds from it
    assert _same(arrays, loaded["model"]) and loaded["iteration"] == 40000.0


def test_numpy2_protocol5_arrays_load(tmp_path):
    """numpy 2 writes contiguous arrays under protocol 5 as ``numpy._core.numeric._frombuffer``."""
    raw = np.arange(6, dtype="<f4").tobytes(order="F")
    data = (b"\x80\x05\x8c\x13numpy._core.numeric\x8c\x0b_frombuffer\x93(\x96" + struct.pack("<Q", len(raw)) + raw
            + b"\x8c\x05numpy\x8c\x05dtype\x93\x8c\x02f4\x89\x88\x87R(K\x03\x8c\x01<NNNJ\xff\xff\xff\xffJ\xff\xff"
            + b"\xff\xffK\x00tbK\x02K\x03\x86\x8c\x01Ft\x94R.")
    loaded = load_pkl(_write(tmp_path, "m.pkl", data), "m.pkl")
    assert np.array_equal(loaded, np.arange(6, dtype=np.float32).reshape(2, 3, order="F"))


def test_numpy_never_builds_anything_from_the_file(tmp_path, monkeypatch):
    """The reader does not call numpy's reconstruct / scalar / frombuffer, so the file's dtype
    state never reaches numpy: it builds arrays from checked strings and raw bytes itself."""
    import numpy.core.multiarray
    import numpy.core.numeric

    def boom(*args):
        raise AssertionError("numpy's unpickling function was called")

    paths = [_write(tmp_path, f"p{protocol}.pkl", pickle.dumps(_genuine(), protocol=protocol)) for protocol in (2, 5)]
    for module, attr in [(numpy.core.multiarray, "_reconstruct"), (numpy.core.multiarray, "scalar"),
                         (numpy.core.numeric, "_frombuffer")]:
        monkeypatch.setattr(module, attr, boom)
    for path in paths:
        assert load_pkl(path, "p.pkl")["model"]["conv.weight"].shape == (4, 3, 3, 3)


# ----------------------------------------------------------------------------- hostile .pkl files
def test_forged_dtype_state_is_refused_before_numpy_sees_it(tmp_path):
    honest = load_pkl(_write(tmp_path, "honest.pkl", _forged_pickle("f8", 0)), "honest.pkl")
    assert honest["model"]["w"].tolist() == [np.frombuffer(b"\x41" * 8, "<f8")[0]]
    with pytest.raises(CheckpointReadError, match=r"^checkpoint forged\.pkl: numpy dtype 'f8' with a state numpy "
                       r"never writes \(flags 1\); the file is corrupt or forged$"):
        load_pkl(_write(tmp_path, "forged.pkl", _forged_pickle("f8", 1)), "forged.pkl")
    with pytest.raises(UnsafeCheckpointError, match=r"^checkpoint crash\.pkl: refused to unpickle a numpy dtype 'O8'"):
        load_pkl(_write(tmp_path, "crash.pkl", _forged_pickle("O8", 1)), "crash.pkl")


@pytest.mark.parametrize("payload, refused", [
    (b"c__builtin__\nbytearray\nJ\x00\x00\x00\x40\x85R", "__builtin__.bytearray"),  # 1 GiB of zeros
    (b"cbuiltins\nbytes\nJ\x00\x00\x00\x40\x85R", "builtins.bytes with arguments"),
    (b"cbuiltins\nslice\nK\x01\x85R", "builtins.slice"),
    (b"cbuiltins\ncomplex\nK\x01\x85R", "builtins.complex"),
    (b"cnumpy\ndtype\n" + _str("U5") + b"K\x00K\x01\x87R", "a numpy dtype 'U5'"),
    (b"cnumpy\ndtype\n" + _str("V8") + b"K\x00K\x01\x87R", "a numpy dtype 'V8'"),
    (b"cnumpy.ma.core\n_mareconstruct\n", "numpy.ma.core._mareconstruct"),
    (b"cnumpy\ndtype\n)\x81", "the NEWOBJ instruction"),
    (b"K\x01Q", "the BINPERSID instruction"),
    (b"}K\x01b", "the state of a dict"),
])
def test_what_allocates_or_builds_other_objects_is_refused(tmp_path, payload, refused):
    path = _write(tmp_path, "evil.pkl", b"\x80\x02" + payload + b".")
    with pytest.raises(UnsafeCheckpointError) as err:
        load_pkl(path, "evil.pkl")
    assert str(err.value).startswith(f"checkpoint evil.pkl: refused to unpickle {refused} (")
    assert "--allow-unsafe-pickle" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("data, detail", [
    (b"\x80\x02Nr\xff\xff\xff\x7f.", "a memo index out of range"),  # Python's unpickler: a 32 GiB memo table
    (b"\x80\x02h\x05.", "memo entry 5 fetched before it was stored"),
    (b"\x80\x02(K\x01\x86.", "stack underflow"),
    (b"\x80\x02]K\x01K\x02s.", "SETITEM into a list"),
    (b"\x80\x02K\x01", "pickle exhausted before seeing STOP"),
    (b"", "pickle exhausted before seeing STOP"),
])
def test_malformed_pickles_are_one_line(tmp_path, data, detail):
    expected = f"checkpoint m.pkl: not a readable .pkl checkpoint (truncated or corrupt: {detail})"
    with pytest.raises(CheckpointReadError, match=f"^{re.escape(expected)}$"):
        load_pkl(_write(tmp_path, "m.pkl", data), "m.pkl")


def test_a_length_field_past_the_end_of_the_file_is_one_line(tmp_path):
    path = _write(tmp_path, "m.pkl", b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc.")  # 1 TiB of bytes
    # the file object reserves the length before reading: refused by the system, or read short
    with pytest.raises(CheckpointReadError, match=r"^checkpoint m\.pkl: not a readable \.pkl checkpoint \(truncated or "
                       r"corrupt: (a length beyond the end of the file|expected 1099511627776 bytes in a bytes8, "
                       r"but only 4 remain)\)$"):
        load_pkl(path, "m.pkl")


@pytest.mark.parametrize("data, message", [
    (pickle.dumps({(1, 2): 0}, 2), "has a dict key of type tuple"),  # predictable hashes: collisions
    (pickle.dumps({2**70: 0}, 2), "has a dict key of type int"),
    (b"\x80\x02" + _array("numpy.core", (3,), "f4", "<", b"\x00" * 8) + b".",
     "an array of shape (3,) and dtype <f4 comes with 8 bytes of data instead of 12"),
])
def test_inconsistent_content_is_one_line(tmp_path, data, message):
    with pytest.raises(CheckpointReadError) as err:
        load_pkl(_write(tmp_path, "m.pkl", data), "m.pkl")
    assert str(err.value).startswith(f"checkpoint m.pkl: {message}")


def test_a_pickle_of_many_small_objects_is_refused_within_its_budget(tmp_path):
    data = b"\x80\x02(" + b"}" * 2_000_000 + b"l."  # 2 MB asking for some 150 MB of dicts
    with pytest.raises(CheckpointReadError, match=r"^checkpoint m\.pkl: reading it would take over 23\.6 MiB "
                       r"\(\d+ pickle instructions\), more than the 23\.6 MiB allowed for a 1\.9 MiB file; "
                       rf"if you trust it, raise {MAX_RATIO_ENV}$"):
        load_pkl(_write(tmp_path, "m.pkl", data), "m.pkl")


def test_the_budget_follows_its_knobs(tmp_path, monkeypatch):
    assert checkpoint_budget(100 * 2**20) == 4 * 100 * 2**20 + 16 * 2**20
    path = _write(tmp_path, "m.pkl", pickle.dumps({"w": np.zeros(2**18, np.float32)}, 4))  # 1 MiB of data
    monkeypatch.setenv(MAX_BYTES_ENV, "1.5M")
    assert checkpoint_budget(100 * 2**20) == 1.5 * 2**20
    with pytest.raises(CheckpointReadError, match=rf"the 1\.5 MiB allowed .*; if you trust it, raise {MAX_BYTES_ENV}$"):
        load_pkl(path, "m.pkl")
    monkeypatch.setenv(MAX_BYTES_ENV, "1K")
    with pytest.raises(CheckpointReadError, match=
                       rf"^checkpoint m\.pkl: the file is 1\.0 MiB, more than {MAX_BYTES_ENV}"):
        load_pkl(path, "m.pkl")
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=rf"^{MAX_BYTES_ENV}=lots: not a positive number of bytes \(e\.g\. "):
        load_pkl(path, "m.pkl")


# ----------------------------------------------------------------------------- .pth files by hand
class _Storage:
    """Stands for a float32 storage of ``numel`` elements in a hand-made ``data.pkl``."""

    def __init__(self, numel: int):
        self.numel = numel


class _Tensor:
    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        n = self.storage.numel
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (n,), (1,), False, OrderedDict())


class _DataPickler(pickle.Pickler):
    """Writes ``data.pkl`` the way ``torch.save`` does: storages as persistent ids."""

    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Storage) else None


def _data_pkl(obj) -> bytes:
    buf = io.BytesIO()
    _DataPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _zip(path: Path, records: List[Tuple[str, bytes, int, int]]) -> str:
    """A zip of (name, stored bytes, method, uncompressed size) records, written field by field so
    that a record may hold a deflate stream that was never produced by compressing its content
    (sizes from 4 GiB on go to a zip64 extra field)."""
    with open(path, "wb") as f:
        central = []
        for name, data, method, size in records:
            offset, encoded = f.tell(), name.encode()
            crc = zlib.crc32(data) if method == zipfile.ZIP_STORED else 0
            extra = struct.pack("<HHQQ", 1, 16, size, len(data)) if size >= 2**32 else b""
            sizes = (0xFFFFFFFF, 0xFFFFFFFF) if extra else (len(data), size)
            f.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 45, 0, method, 0, 0, crc, *sizes, len(encoded), len(extra)))
            f.write(encoded + extra + data)
            central.append(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 45, 45, 0, method, 0, 0, crc, *sizes, len(encoded),
                                       len(extra), 0, 0, 0, 0, offset) + encoded + extra)
        start = f.tell()
        f.write(b"".join(central))
        f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(records), len(records), f.tell() - start, start, 0))
    return str(path)


def _stored(name: str, data: bytes) -> Tuple[str, bytes, int, int]:
    return (name, data, zipfile.ZIP_STORED, len(data))


def _zeros_bomb_pth(path: Path, gib: float) -> str:
    """A ``.pth`` whose one float32 storage is ``gib`` GiB of zeros, deflated: one 1 MiB block,
    compressed once and repeated, so the file is ~1 KiB per MiB and costs nothing to make. Without
    its check, torch.load allocates and inflates all of it."""
    mib = 2**20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    blocks = int(gib * 1024)
    deflated = block * blocks + b"\x03\x00"  # then an empty final block
    return _zip(path, [
        _stored("archive/data.pkl", _data_pkl({"model": {"w": _Tensor(_Storage(blocks * mib // 4))}})),
        _stored("archive/byteorder", b"little"),
        ("archive/data/0", deflated, zipfile.ZIP_DEFLATED, blocks * mib),
        _stored("archive/version", b"3\n"),
    ])


def test_hand_made_pth_files_are_what_torch_reads(tmp_path):
    """The builders above make files torch.load really reads (so the refusals below are real)."""
    path = _zeros_bomb_pth(tmp_path / "small.pth", 1 / 128)  # 8 MiB: within the budget
    assert os.path.getsize(path) < 64 * 1024
    loaded = load_pth(path, "small.pth")
    assert loaded["model"]["w"].shape == (2 * 2**20,) and not loaded["model"]["w"].any()


def test_compressed_bomb_is_refused_before_torch_load(tmp_path, monkeypatch):
    path = _zeros_bomb_pth(tmp_path / "bomb.pth", 1)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    with pytest.raises(CheckpointReadError, match=r"^checkpoint bomb\.pth: archive/data/0 inflates [\d.]+ [KM]iB to "
                       rf"1\.0 GiB, more than 4 times \(a zip bomb\?\); if you trust it, raise {MAX_RATIO_ENV}$"):
        load_pth(path, "bomb.pth")


def test_entries_each_within_the_ratio_are_refused_past_the_budget(tmp_path, monkeypatch):
    """Entries of 16 MiB may inflate beyond the ratio (small files need room); their sum may not."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    sixteen_mib = compressor.compress(bytes(16 * 2**20)) + compressor.flush()
    path = _zip(tmp_path / "many.pth", [_stored("archive/data.pkl", _data_pkl({}))] + [
        (f"archive/data/{i}", sixteen_mib, zipfile.ZIP_DEFLATED, 16 * 2**20) for i in range(3)])
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    with pytest.raises(CheckpointReadError, match=r"^checkpoint many\.pth: reading it would take over 32\.0 MiB "
                       r"\(archive/data/1 inflates to 16\.0 MiB\), more than the 16\.2 MiB allowed for a 48\.\d KiB"):
        load_pth(path, "many.pth")


def test_entries_declaring_more_than_the_file_are_refused(tmp_path):
    stored = _zip(tmp_path / "stored.pth", [("archive/data/0", b"", zipfile.ZIP_STORED, 3 * 2**30)])
    deflated = tmp_path / "deflated.pth"
    _zip(deflated, [("archive/data/0", b"\x03\x00", zipfile.ZIP_DEFLATED, 0)])
    # claim 1 GiB of compressed data, in the local and the central header alike
    deflated.write_bytes(deflated.read_bytes().replace(struct.pack("<II", 2, 0), struct.pack("<II", 2**30, 0)))
    for path in (stored, str(deflated)):
        with pytest.raises(CheckpointReadError, match=r"^checkpoint lying\.pth: not a readable \.pth/\.pkl checkpoint "
                           r"\(truncated or corrupt: archive/data/0 declares more bytes than the file holds\)$"):
            load_pth(path, "lying.pth")


def test_deflated_pth_within_the_budget_loads_with_identical_values(tmp_path):
    state = {"model": {"w": torch.randn(300, 7), "b": torch.arange(5)}, "iteration": 3}
    buf = io.BytesIO()
    torch.save(state, buf)
    path = tmp_path / "deflated.pth"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    loaded = load_pth(str(path), "deflated.pth")
    assert loaded["iteration"] == 3 and all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())


_BYTEARRAY_GLOBAL = b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x40\x85R."
# protocol 4 spelling: the module name memoized and fetched again, as pickle does for repeats
_BYTEARRAY_STACK_GLOBAL = (b"\x80\x04\x8c\x08builtins\x94\x8c\x03int\x94\x93K\x00\x85R0"
                           b"h\x00\x8c\tbytearray\x93J\x00\x00\x00\x40\x85R.")


@pytest.mark.parametrize("data_pkl", [_BYTEARRAY_GLOBAL, _BYTEARRAY_STACK_GLOBAL], ids=["GLOBAL", "STACK_GLOBAL"])
def test_pth_pickle_that_allocates_from_a_number_is_refused(tmp_path, monkeypatch, data_pkl):
    """torch's weights_only unpickler allows ``bytearray``: 1 GiB of zeros from 40 bytes."""
    path = _zip(tmp_path / "evil.pth", [_stored("archive/data.pkl", data_pkl), _stored("archive/version", b"3\n")])
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    with pytest.raises(UnsafeCheckpointError, match=r"^checkpoint evil\.pth: refused to unpickle builtins\.bytearray "
                       r"\(weights never need it, and it allocates memory from a number in the file\); if you trust"):
        load_pth(path, "evil.pth")


def test_pth_pickle_naming_a_computed_global_is_refused(tmp_path):
    data_pkl = b"\x80\x04\x8c\x01a\x8c\x01b\x86\x8c\x01c\x93."  # STACK_GLOBAL over a tuple and a string
    path = _zip(tmp_path / "odd.pth", [_stored("archive/data.pkl", data_pkl)])
    with pytest.raises(CheckpointReadError, match=r"^checkpoint odd\.pth: not a readable \.pth/\.pkl checkpoint "
                       r"\(truncated or corrupt: archive/data\.pkl names a global it computes\)$"):
        load_pth(path, "odd.pth")


def test_torchscript_and_legacy_pth_need_the_explicit_switch(tmp_path, monkeypatch):
    script = _zip(tmp_path / "script.pth", [_stored("archive/data.pkl", _data_pkl({})),
                                            _stored("archive/constants.pkl", _data_pkl(()))])
    with pytest.raises(UnsafeCheckpointError, match=r"^checkpoint script\.pth: refused to unpickle a TorchScript "
                       r"archive \(weights never need it, and it holds code\)"):
        load_pth(script, "script.pth")
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.ones(3)}}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"^checkpoint legacy\.pth: a legacy \(PyTorch < 1\.6\) checkpoint, "
                       r"whose sizes cannot be checked before torch\.load allocates them; re-save it"):
        load_pth(str(legacy), "legacy.pth")
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")
    assert torch.equal(load_pth(str(legacy), "legacy.pth")["model"]["w"], torch.ones(3))


# ----------------------------------------------------------------------------- .safetensors
def _safetensors(path: Path, header: dict, data: bytes) -> str:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


_OUTSIDE = "tensor 'w' has a bad shape or offsets outside the file"


@pytest.mark.parametrize("header, data, detail", [
    ({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}, b"", _OUTSIDE),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8),
     "tensor 'w' has 8 bytes for its 1-d shape"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), _OUTSIDE),
    ({"w": "F32"}, b"", _OUTSIDE),
])
def test_safetensors_header_is_checked_against_the_file(tmp_path, header, data, detail):
    path = _safetensors(tmp_path / "m.safetensors", header, data)
    expected = f"checkpoint m.safetensors: not a readable .safetensors checkpoint (truncated or corrupt: {detail})"
    with pytest.raises(CheckpointReadError, match=f"^{re.escape(expected)}$"):
        load_safetensors(path, "m.safetensors")


def test_safetensors_header_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(CheckpointReadError, match=r"truncated or corrupt: a header of 1152921504606846976 bytes\)$"):
        load_safetensors(str(path), "m.safetensors")


# ----------------------------------------------------------------------------- the checkpointer
@pytest.fixture
def tiny_model():
    return torch.nn.Linear(3, 2)  # the refusals come before the model matters


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize("suffix, model, message", [
    ("pkl", {7: np.zeros(3, np.float32)}, "its model has 7 as a key; a state dict maps parameter names (strings) to "
                                          "tensors"),
    ("pth", {("a", 1): torch.zeros(3)}, "its model has a key of type tuple as a key"),
    ("pth", {"w": "a string"}, "its model entry 'w' is a str; a state dict holds numeric arrays or tensors"),
    ("pkl", {"w": [1.0, 2.0]}, "its model entry 'w' is a list"),
    ("pkl", {"w": 2**70}, "its model entry 'w' is a numpy array of dtype object"),
    ("pth", {"w": torch.zeros(2).to_sparse()}, "its model entry 'w' is a sparse_coo tensor"),
])
def test_state_dict_that_is_not_one_is_one_line(tmp_path, tiny_model, suffix, model, message):
    path = str(tmp_path / f"bad.{suffix}")
    if suffix == "pkl":
        _write(tmp_path, "bad.pkl", pickle.dumps({"model": model, "__author__": "x"}, 2))
    else:
        torch.save({"model": model}, path)
    with pytest.raises(CheckpointReadError) as err:
        MaskFormerCheckpointer(tiny_model).load(path)
    assert str(err.value).startswith(f"checkpoint {path}: {message}")


def test_pth_that_holds_no_dict_is_one_line(tmp_path, tiny_model):
    path = str(tmp_path / "list.pth")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointReadError, match=r"^checkpoint .*list\.pth: not a state dict \(found list\)$"):
        MaskFormerCheckpointer(tiny_model).load(path)


def test_numbers_in_a_state_dict_load_as_scalars(tmp_path):
    model = torch.nn.BatchNorm1d(3)  # num_batches_tracked: a 0-d int64 buffer
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["num_batches_tracked"], state["bias"] = 5, np.array([1.0, 2.0, 3.0], ">f4")  # big-endian
    path = _write(tmp_path, "n.pkl", pickle.dumps({"model": state, "__author__": "x"}, 4))
    MaskFormerCheckpointer(model).load(path)
    assert model.num_batches_tracked.item() == 5 and model.bias.tolist() == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- command lines
def _config(folder: Path, weights: str) -> Path:
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = str(folder / "out")
    cfg.DATASETS.SHAPES.ROOT = str(folder / "cache")
    cfg.DATASETS.SHAPES.NUM_TRAIN, cfg.DATASETS.SHAPES.NUM_VAL, cfg.DATASETS.SHAPES.IMAGE_SIZE = 4, 2, 64
    path = folder / "config.yaml"
    path.write_text(cfg.dump())
    return path


def test_the_forged_dtype_file_crashes_a_plain_unpickler(tmp_path):
    """What the tools below used to do with it (run in a child process, where a crash is safe)."""
    path = _write(tmp_path, "crash.pkl", _forged_pickle("O8", 1))
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'), encoding='latin1')"
    child = subprocess.run([sys.executable, "-c", code, path], capture_output=True, cwd=tmp_path,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))  # no core file
    assert child.returncode < 0, child.stderr[-500:]  # killed by a signal


@pytest.mark.parametrize("tool, hostile", [("train_net", "forged_dtype.pkl"), ("demo", "forged_dtype.pkl"),
                                           ("train_net", "bomb.pth")])
@pytest.mark.slow
def test_tools_refuse_hostile_checkpoints_in_one_line(tmp_path, tool, hostile):
    """The file that crashed them (a signal) and a 5 MiB .pth that inflated to 5 GiB inside torch.load."""
    if hostile == "bomb.pth":
        weights, needles = _zeros_bomb_pth(tmp_path / hostile, 5), ["bomb.pth: archive/data/0 inflates", "5.0 GiB"]
    else:
        weights, needles = _write(tmp_path, hostile, _forged_pickle("O8", 1)), [
            "forged_dtype.pkl: refused to unpickle a numpy dtype 'O8'"]
    config = _config(tmp_path, weights)
    image = tmp_path / "image.png"
    image.write_bytes((REPO / "docs" / "demo_shapes_val_all.png").read_bytes())
    if tool == "demo":
        args = ["demo/demo.py", "--config-file", config, "--input", image, "--output", tmp_path / "vis"]
    else:
        args = ["train_net.py", "--config-file", config, "--eval-only"]
    outcome = run_hostile(args)
    assert_refused(outcome, *needles)
    assert outcome.returncode == 1
    written = {p for p in files_under(tmp_path) if not p.startswith(("out", "cache", "vis"))}  # their folders
    assert written == {hostile, "config.yaml", "image.png"}, written
