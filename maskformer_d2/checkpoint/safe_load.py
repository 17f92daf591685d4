"""Reading checkpoint files without running code from them and without letting them size memory.

A pickle can call any Python function while it is read, and several formats let a few bytes of a
file ask for gigabytes, so a downloaded checkpoint is read as hostile until checked:

* ``.pkl`` (detectron2 / official model-zoo files) are never handed to a real unpickler. A small
  interpreter of the pickle instructions builds containers, strings and numbers itself, and numpy
  arrays / dtypes / scalars from *recipes*: numpy's reconstruct / dtype / scalar globals map to
  stand-ins that record their arguments and state, and an array is built only from a plain numeric
  dtype (``np.dtype("<f4")``, from a checked string) and raw bytes whose length is
  ``prod(shape) x itemsize``. A dtype state from the file never reaches numpy (a forged one makes
  numpy corrupt memory), nor does anything that allocates from a number (``bytearray(N)``).
* ``.pth`` / ``.pyth``: ``torch.load(weights_only=True)``, which builds only tensors, containers and
  plain values (everything our trainer writes, resume state included), after the zip's central
  directory was checked: its entries inflate within the budget below, it is not TorchScript, and
  its ``data.pkl`` asks for nothing that allocates from a number. Legacy (PyTorch < 1.6, not zip)
  files declare their sizes only inside the pickle and are refused.
* ``.safetensors``: tensors only by construction; the header's offsets and shapes are checked
  against the file before any tensor is read.

**Budget.** Reading may take at most ``MASKFORMER_D2_MAX_CHECKPOINT_RATIO`` (default 4) times the
file's size plus 16 MiB, and never more than ``MASKFORMER_D2_MAX_CHECKPOINT_BYTES`` (default 8G;
suffixes K, M, G, T). What a file would take is known before it is read: the zip's declared sizes,
the byte strings and instruction count of a pickle.

Every refusal is one line naming the file: :class:`~maskformer_d2.errors.UnsafeCheckpointError`
for what only full pickle could read, :class:`~maskformer_d2.errors.CheckpointReadError` for the
rest. Full pickle is used only when the user says so explicitly: ``--allow-unsafe-pickle`` on the
command line (train_net.py, demo/demo.py) or ``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``; the budget
applies with it too.
"""
import io
import json
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from ..errors import CheckpointReadError, UnsafeCheckpointError, first_line

__all__ = [
    "UNSAFE_PICKLE_ENV",
    "UNSAFE_PICKLE_FLAG",
    "MAX_BYTES_ENV",
    "MAX_RATIO_ENV",
    "unsafe_pickle_allowed",
    "allow_unsafe_pickle",
    "checkpoint_budget",
    "load_pkl",
    "load_pth",
    "load_safetensors",
    "read_state_dict",
]

UNSAFE_PICKLE_ENV = "MASKFORMER_D2_ALLOW_UNSAFE_PICKLE"
UNSAFE_PICKLE_FLAG = "--allow-unsafe-pickle"
MAX_BYTES_ENV = "MASKFORMER_D2_MAX_CHECKPOINT_BYTES"
MAX_RATIO_ENV = "MASKFORMER_D2_MAX_CHECKPOINT_RATIO"

DEFAULT_MAX_BYTES = 8 * 2**30
DEFAULT_MAX_RATIO = 4.0
_SLACK_BYTES = 16 * 2**20  # so that small files, whose objects outweigh their bytes, still load
# What one pickle instruction may cost beyond its own bytes (an object, a slot in a container);
# a real checkpoint spends its bytes on array data, so the count of instructions stays small.
_COST_PER_INSTRUCTION = 256
_MAX_INSTRUCTIONS = 1_000_000  # bounds the time a pickle takes (a model-zoo file has some 20 per array)
_MAX_DIMS = 32  # numpy's own limit


def unsafe_pickle_allowed() -> bool:
    """Whether the user allowed full pickle (``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``)."""
    return os.environ.get(UNSAFE_PICKLE_ENV, "") == "1"


def allow_unsafe_pickle() -> None:
    """Allow full pickle in this process and the processes it starts (the CLI flag does this)."""
    os.environ[UNSAFE_PICKLE_ENV] = "1"


_OPT_IN = f"if you trust this file, pass {UNSAFE_PICKLE_FLAG} (or set {UNSAFE_PICKLE_ENV}=1)"


def _refusal(name: str, what: str, why: Optional[str] = None) -> UnsafeCheckpointError:
    why = why or "unpickling it could run code from the file"
    return UnsafeCheckpointError(
        f"checkpoint {name}: refused to unpickle {what} (weights never need it, and {why}); {_OPT_IN}")


# Globals that allocate from a number in the file, or (torch's weights_only unpickler allows them)
# convert / move tensors, a dtype change growing a tensor 16-fold; no weights file needs them.
_ALLOCATING = {
    ("builtins", "bytearray"): "it allocates memory from a number in the file",
    ("builtins", "bytes"): "it allocates memory from a number in the file",
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"): "it converts tensors to another dtype or device",
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): "it converts arrays to another dtype or device",
}


def _python3_name(module: str, attr: str) -> Tuple[str, str]:
    """The global Python 3 looks up for a (module, name) a Python 2 pickle may spell differently."""
    return ("builtins" if module == "__builtin__" else module), attr


def _corrupt(name: str, kind: str, detail: str) -> CheckpointReadError:
    return CheckpointReadError(f"checkpoint {name}: not a readable {kind} checkpoint (truncated or corrupt: {detail})")


# ----------------------------------------------------------------------------- budget
def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _env_number(var: str, default: float, units: bool) -> float:
    """A positive number from the environment (bytes may carry a K/M/G/T suffix); ``default`` if unset."""
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    pattern = r"(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?" if units else r"(\d+(?:\.\d*)?)()"
    found = re.fullmatch(pattern, text, re.I)
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"{var}={text[:40]}: not a positive number{' of bytes' if units else ''} "
                         f"(e.g. {var}={'8G' if units else '4'})")
    return float(found.group(1)) * _UNITS[found.group(2).upper()]


def checkpoint_budget(file_bytes: int) -> int:
    """The memory reading a checkpoint of ``file_bytes`` may take: ``MASKFORMER_D2_MAX_CHECKPOINT_RATIO``
    times the file plus 16 MiB, capped by ``MASKFORMER_D2_MAX_CHECKPOINT_BYTES``."""
    return _Budget("", 0).limit_for(file_bytes)


class _Budget:
    """Memory a checkpoint file may make this process take while it is read; :meth:`charge` refuses
    the file as soon as the running total would pass it."""

    def __init__(self, name: str, file_bytes: int):
        self.name, self.file_bytes, self.spent = name, file_bytes, 0
        self.ratio = _env_number(MAX_RATIO_ENV, DEFAULT_MAX_RATIO, units=False)
        self.cap = int(_env_number(MAX_BYTES_ENV, DEFAULT_MAX_BYTES, units=True))
        self.limit = self.limit_for(file_bytes)
        if file_bytes > self.cap:
            raise CheckpointReadError(
                f"checkpoint {name}: the file is {_size(file_bytes)}, more than {MAX_BYTES_ENV} "
                f"({_size(self.cap)}); if you trust it, raise {MAX_BYTES_ENV}")

    def limit_for(self, file_bytes: int) -> int:
        return int(min(self.cap, self.ratio * file_bytes + _SLACK_BYTES))

    def charge(self, nbytes: int, what: Union[str, Callable[[], str]]) -> None:
        """Count ``nbytes`` more; past the limit, refuse the file saying ``what`` took them."""
        self.spent += nbytes
        if self.spent > self.limit:
            knob = MAX_BYTES_ENV if self.limit == self.cap else MAX_RATIO_ENV
            raise CheckpointReadError(
                f"checkpoint {self.name}: reading it would take over {_size(self.spent)} "
                f"({what if isinstance(what, str) else what()}), more than the {_size(self.limit)} allowed "
                f"for a {_size(self.file_bytes)} file; if you trust it, raise {knob}")


class _Clamped(io.RawIOBase):
    """A read-only view of an open file that never reads (so never allocates) past its end: a
    length field in the file cannot make ``read(n)`` reserve ``n`` bytes up front."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.size = os.fstat(f.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self._f.tell())
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        return self._f.readline(limit)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


# ----------------------------------------------------------------------------- reading pickles
_MARK = object()
_MEMO_PUTS = frozenset(["PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"])
_MEMO_GETS = frozenset(["GET", "BINGET", "LONG_BINGET"])
_STRINGS = frozenset(["UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
                      "STRING", "BINSTRING", "SHORT_BINSTRING"])  # Python 2 ``str`` comes as latin-1 text


def _instructions(stream: BinaryIO, name: str, kind: str, budget: _Budget,
                  copies: int) -> Iterator[Tuple[int, str, Any]]:
    """(count, instruction name, argument) of a pickle up to STOP, each charged to ``budget`` (an
    object and a slot, plus ``copies`` times its bytes / text); a truncated or garbled stream is a
    :class:`CheckpointReadError`."""
    spent, limit, count = budget.spent, budget.limit, 0
    try:
        for op, arg, _ in pickletools.genops(stream):
            count += 1
            spent += _COST_PER_INSTRUCTION + (copies * len(arg) if arg.__class__ in (str, bytes, bytearray) else 0)
            if spent > limit or count > _MAX_INSTRUCTIONS:
                budget.spent = spent
                if count > _MAX_INSTRUCTIONS:
                    raise CheckpointReadError(
                        f"checkpoint {name}: over {_MAX_INSTRUCTIONS} pickle instructions, which no checkpoint "
                        "has (its bytes are array data); the file is not a checkpoint")
                budget.charge(0, f"{count} pickle instructions")
            yield count, op.name, arg
    # what genops raises on garbage; MemoryError: a length field far beyond the file, which the
    # file object tried to reserve (it reserves without touching, so nothing was used)
    except (ValueError, OverflowError, EOFError, struct.error, MemoryError) as e:
        detail = "a length beyond the end of the file" if isinstance(e, MemoryError) else str(e).splitlines()[0][:120]
        raise _corrupt(name, kind, detail or type(e).__name__) from None
    finally:
        budget.spent = spent


def _memo_index(op: str, arg: Any, indices: Set[int], count: int, name: str, kind: str) -> int:
    """The memo slot a PUT / MEMOIZE fills. Picklers number them 0, 1, 2, ...; a far index would make
    Python's unpickler size its memo table from it (10 bytes of pickle asking for gigabytes)."""
    index = len(indices) if op == "MEMOIZE" else arg
    if type(index) is not int or not 0 <= index <= count:
        raise _corrupt(name, kind, "a memo index out of range")
    indices.add(index)
    return index


# name -> (pops to a MARK, then pops this many, pushes a MARK, pushes this many), from pickletools
_STACK_EFFECTS = {
    op.name: (pickletools.markobject in op.stack_before,
              op.stack_before.index(pickletools.markobject) if pickletools.markobject in op.stack_before
              else len(op.stack_before),
              pickletools.markobject in op.stack_after, len(op.stack_after))
    for op in pickletools.opcodes
}


class _Survey:
    """What a pickle asks for, found without building anything: the globals it names, the memo
    entries it fetches again, and (charged to the budget) its instructions and bytes.

    A shadow stack follows each instruction's declared stack effect (as ``pickletools.dis`` does),
    holding only short strings, so that ``STACK_GLOBAL`` is resolved from what is really on the
    stack; a global it cannot resolve is reported as ``("?", "?")``.
    """

    def __init__(self, stream: BinaryIO, name: str, kind: str, budget: _Budget):
        self.globals: Set[Tuple[str, str]] = set()
        self.fetched: Set[int] = set()
        stack: List[Any] = []
        memo: Dict[int, Any] = {}
        indices: Set[int] = set()
        # charged twice: the bytes, then the array built from them
        for count, op, arg in _instructions(stream, name, kind, budget, copies=2):
            if op in _MEMO_PUTS:
                memo[_memo_index(op, arg, indices, count, name, kind)] = stack[-1] if stack else None
                continue
            if op in _MEMO_GETS:
                self.fetched.add(arg)
                stack.append(memo.get(arg))
                continue
            if op == "GLOBAL":
                module, _, attr = arg.partition(" ")
                self.globals.add((module, attr))
            elif op == "STACK_GLOBAL":
                module, attr = stack[-2:] if len(stack) >= 2 else (None, None)
                ok = isinstance(module, str) and isinstance(attr, str)
                self.globals.add((module, attr) if ok else ("?", "?"))
            to_mark, pops, mark, pushes = _STACK_EFFECTS[op]
            if to_mark or (op == "POP" and stack and stack[-1] is _MARK):
                while stack and stack[-1] is not _MARK:
                    stack.pop()
                if not stack:
                    raise _corrupt(name, kind, f"{op} without a MARK")
                stack.pop()
                pops = pops if to_mark else 0
            if len(stack) < pops:
                raise _corrupt(name, kind, f"{op} on a stack of {len(stack)}")
            top = stack[-1] if stack else None
            if pops:
                del stack[-pops:]
            if mark:
                stack.append(_MARK)
            elif op == "DUP":
                stack += [top, top]
            elif op in _STRINGS:
                stack.append(arg if len(arg) <= 256 else None)
            else:
                stack += [None] * pushes


# The .pkl interpreter: what numpy would build, recorded and checked instead.
_NUMERIC_CODES = frozenset(["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"])
# what numpy writes after (version, byte order) for a numeric dtype: subarray, names, fields,
# elsize, alignment, flags (a forged ``flags`` makes numpy treat the data as object pointers)
_NUMERIC_DTYPE_STATE = (None, None, None, -1, -1, 0)


class _Unreadable(Exception):
    """A malformed instruction of the .pkl interpreter (becomes a CheckpointReadError)."""


class _Global:
    """A global the .pkl interpreter knows: ``numpy.ndarray`` (an argument only) or a stand-in call."""

    def __init__(self, qualname: str, call: Optional[Callable[..., Any]] = None):
        self.qualname, self.call = qualname, call


_NDARRAY = _Global("numpy.ndarray")


class _DtypeRecipe:
    """``numpy.dtype(code, align, copy)``, then BUILD(state): a numeric code only, and only the state
    numpy itself writes for it. ``dtype`` is always made from a checked string such as ``"<f4"``."""

    def __init__(self, reader: "_ModelZooReader", code: Any = None, *_: Any):
        if not isinstance(code, str) or code not in _NUMERIC_CODES:
            shown = repr(code[:20]) if isinstance(code, str) else f"of a {type(code).__name__}"
            raise reader.refuse(f"a numpy dtype {shown}", "the .pkl reader builds numeric arrays only")
        self.code, self.dtype = code, np.dtype("=" + code)

    def build(self, reader: "_ModelZooReader", state: Any) -> None:
        ok = isinstance(state, tuple) and len(state) in (8, 9) and type(state[0]) is int and state[0] in (3, 4)
        ok = ok and isinstance(state[1], str) and state[1] in ("<", ">", "|", "=")
        ok = ok and (len(state) == 8 or state[8] is None)  # version 4 adds metadata
        ok = ok and all(type(s) is type(e) and s == e for s, e in zip(state[2:8], _NUMERIC_DTYPE_STATE))
        if not ok:
            flags = state[7] if isinstance(state, tuple) and len(state) >= 8 else None
            what = f"flags {flags}" if type(flags) is int and 0 < abs(flags) < 2**64 else "an unknown layout"
            raise CheckpointReadError(
                f"checkpoint {reader.name}: numpy dtype {self.code!r} with a state numpy never writes ({what}); "
                "the file is corrupt or forged")
        self.dtype = np.dtype(state[1] + self.code)

    def settle(self, reader: "_ModelZooReader") -> np.dtype:
        return self.dtype


class _ArrayRecipe:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``, then BUILD((version, shape,
    dtype, is_fortran, data)), when the array is built."""

    def __init__(self, reader: "_ModelZooReader", cls: Any = None, *_: Any):
        if cls is not _NDARRAY:
            raise reader.refuse(f"an array of class {cls.qualname if isinstance(cls, _Global) else type(cls).__name__}")
        self.array: Optional[np.ndarray] = None

    def build(self, reader: "_ModelZooReader", state: Any) -> None:
        if self.array is not None:
            raise _Unreadable("an array built twice")
        if isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int:
            state = state[1:]  # numpy writes a version first (version 0 did not)
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Unreadable("an array state that is not (shape, dtype, is_fortran, data)")
        shape, dtype, fortran, raw = state
        self.array = reader.array(raw, dtype, shape, fortran)

    def settle(self, reader: "_ModelZooReader") -> np.ndarray:
        if self.array is None:
            raise _Unreadable("an array without its data")
        return self.array


# (module, name) a model-zoo .pkl may name, under numpy 1 and 2 and Python 2 and 3 names: the
# _ModelZooReader method standing in for it (None: numpy.ndarray, an argument of _reconstruct)
_MODEL_ZOO_GLOBALS: Dict[Tuple[str, str], Optional[str]] = {
    ("numpy", "ndarray"): None, ("numpy", "dtype"): "dtype",
    ("collections", "OrderedDict"): "ordered_dict", ("_codecs", "encode"): "latin1",
    **{(f"{core}.multiarray", "_reconstruct"): "reconstruct" for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.multiarray", "scalar"): "scalar" for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.numeric", "_frombuffer"): "frombuffer" for core in ("numpy.core", "numpy._core")},
    **{(builtins, "set"): "make_set" for builtins in ("builtins", "__builtin__")},
    **{(builtins, "frozenset"): "make_frozenset" for builtins in ("builtins", "__builtin__")},
    **{(builtins, "bytes"): "empty_bytes" for builtins in ("builtins", "__builtin__")},
}


class _Stack:
    """The interpreter's stack and its MARKs; nothing pops past the innermost MARK."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self.marks: List[int] = []

    def push(self, value: Any) -> None:
        self.items.append(value)

    def pop(self, n: int = 1) -> List[Any]:
        if len(self.items) - n < (self.marks[-1] if self.marks else 0):
            raise _Unreadable("stack underflow")
        popped = self.items[len(self.items) - n:]
        del self.items[len(self.items) - n:]
        return popped

    def top(self) -> Any:
        if len(self.items) <= (self.marks[-1] if self.marks else 0):
            raise _Unreadable("stack underflow")
        return self.items[-1]

    def pop_mark(self) -> List[Any]:
        if not self.marks:
            raise _Unreadable("no MARK")
        start = self.marks.pop()
        popped = self.items[start:]
        del self.items[start:]
        return popped


def _dict_key(reader: "_ModelZooReader", key: Any) -> Any:
    # Strings hash with a random seed; large ints, floats and tuples hash predictably, and keys
    # crafted to collide would make building one dict take quadratic time.
    if isinstance(key, (str, bytes, bool)) or key is None or (type(key) is int and -(2**60) < key < 2**60):
        return key
    raise CheckpointReadError(
        f"checkpoint {reader.name}: has a dict key of type {type(key).__name__}; a checkpoint's dicts "
        "are keyed by strings or small integers")


class _ModelZooReader:
    """Interprets a pickle instruction by instruction, building only containers, strings, numbers
    and, through the recipes above, numeric numpy arrays / dtypes / scalars.

    ``keep`` lists the memo entries the pickle fetches again (from :class:`_Survey`); the others are
    not kept, so the file's raw array bytes do not stay alive next to the arrays built from them.
    """

    def __init__(self, name: str, budget: _Budget, keep: Set[int]):
        self.name, self.budget, self.keep = name, budget, keep
        self.globals = {key: _NDARRAY if method is None else _Global(".".join(key), getattr(self, method))
                        for key, method in _MODEL_ZOO_GLOBALS.items()}

    def refuse(self, what: str, why: Optional[str] = None) -> UnsafeCheckpointError:
        return _refusal(self.name, what, why)

    def settle(self, value: Any) -> Any:
        """What a stack entry stands for once it goes into a container or a call."""
        return value.settle(self) if isinstance(value, (_DtypeRecipe, _ArrayRecipe)) else value

    def array(self, raw: Any, dtype: Any, shape: Any, fortran: Any) -> np.ndarray:
        """A numeric array from checked raw bytes: the only way an array comes out of a .pkl."""
        if not isinstance(dtype, np.dtype):  # only _DtypeRecipe makes np.dtype objects here
            raise _Unreadable("an array whose dtype is not a numpy dtype")
        if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
                and all(type(d) is int and 0 <= d < 2**62 for d in shape)):
            raise _Unreadable("an array shape that is not a tuple of non-negative integers")
        if type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise _Unreadable("an array order that is not a boolean")
        if isinstance(raw, str):  # Python 2 ``str``, read as latin-1 (as detectron2 reads them)
            self.budget.charge(len(raw), "array data")
            raw = raw.encode("latin1")  # every character is below 256: it was decoded from latin-1
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise _Unreadable(f"array data of type {type(raw).__name__}")
        count = math.prod(shape)
        if count * dtype.itemsize != len(raw):
            raise CheckpointReadError(
                f"checkpoint {self.name}: an array of shape {shape} and dtype {dtype.str} comes with "
                f"{len(raw)} bytes of data instead of {count * dtype.itemsize}; the file is corrupt")
        self.budget.charge(len(raw), "array data")
        view = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
        return view.astype(dtype.newbyteorder("="), order="C")  # an owned, writable, native copy

    # -- stand-ins for the globals of _MODEL_ZOO_GLOBALS
    def reconstruct(self, *args: Any) -> _ArrayRecipe:
        return _ArrayRecipe(self, *args)

    def dtype(self, *args: Any) -> _DtypeRecipe:
        return _DtypeRecipe(self, *args)

    def scalar(self, dtype: Any = None, raw: Any = None, *rest: Any) -> Any:
        if rest:
            raise _Unreadable("a numpy scalar with extra arguments")
        return self.array(raw, dtype, (), False)[()]  # e.g. np.float64, as numpy returns it

    def frombuffer(self, raw: Any = None, dtype: Any = None, shape: Any = None, order: Any = "C",
                   *rest: Any) -> np.ndarray:
        if not isinstance(order, str) or order not in ("C", "F") or rest:
            raise _Unreadable("an array order that is not 'C' or 'F'")
        return self.array(raw, dtype, shape, order == "F")

    def latin1(self, text: Any = None, encoding: Any = None, *rest: Any) -> bytes:
        # protocol 2 writes a Python 3 bytes object as _codecs.encode(text, "latin1")
        if not (isinstance(text, str) and isinstance(encoding, str) and encoding in ("latin1", "latin-1")) or rest:
            raise _Unreadable("_codecs.encode of something else than latin-1 text")
        self.budget.charge(len(text), "byte strings")
        return text.encode("latin1")

    def empty_bytes(self, *args: Any) -> bytes:
        if args:  # bytes(N) would allocate N bytes; protocol 2 only ever writes bytes()
            raise self.refuse("builtins.bytes with arguments", "it allocates memory from a number in the file")
        return b""

    def _items(self, what: str, args: Tuple[Any, ...]) -> List[Any]:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
            raise _Unreadable(f"{what} of something else than a list")
        return list(args[0]) if args else []

    def make_set(self, *args: Any) -> set:
        return {_dict_key(self, k) for k in self._items("a set", args)}

    def make_frozenset(self, *args: Any) -> frozenset:
        return frozenset(self.make_set(*args))

    def ordered_dict(self, *args: Any) -> OrderedDict:
        pairs = self._items("an OrderedDict", args)
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise _Unreadable("an OrderedDict of something else than pairs")
        return OrderedDict((_dict_key(self, k), v) for k, v in pairs)

    def _fill(self, target: Any, items: List[Any], op: str) -> None:
        if isinstance(target, dict) and op in ("DICT", "SETITEM", "SETITEMS") and len(items) % 2 == 0:
            target.update((_dict_key(self, k), v) for k, v in zip(items[::2], items[1::2]))
        elif isinstance(target, list) and op in ("LIST", "APPEND", "APPENDS"):
            target.extend(items)
        elif isinstance(target, set) and op == "ADDITEMS":
            target.update(_dict_key(self, k) for k in items)
        else:
            raise _Unreadable(f"{op} into a {type(target).__name__}")

    # -- the interpreter
    def run(self, stream: BinaryIO) -> Any:
        """The object the pickle in ``stream`` describes."""
        stack, memo, indices = _Stack(), {}, set()
        for count, name, arg in _instructions(stream, self.name, ".pkl", self.budget, copies=1):
            try:
                if name in _PUSH_ARGUMENT:  # the most frequent first
                    stack.push(arg)
                elif name in _PUSH_NEW:
                    stack.push(_PUSH_NEW[name]())
                elif name == "STOP":
                    return self.settle(stack.pop()[0])
                elif name == "MARK":
                    stack.marks.append(len(stack.items))
                elif name == "POP":
                    if stack.marks and stack.marks[-1] == len(stack.items):
                        stack.marks.pop()
                    else:
                        stack.pop()
                elif name == "POP_MARK":
                    stack.pop_mark()
                elif name == "DUP":
                    stack.push(stack.top())
                elif name in _MEMO_PUTS:
                    index = _memo_index(name, arg, indices, count, self.name, ".pkl")
                    if index in self.keep:
                        memo[index] = stack.top()
                elif name in _MEMO_GETS:
                    if arg not in memo:
                        raise _Unreadable(f"memo entry {arg} fetched before it was stored")
                    stack.push(memo[arg])
                elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "LIST", "DICT", "FROZENSET"):
                    items = stack.pop_mark() if name[-1] not in "123" else stack.pop(int(name[-1]))
                    items = [self.settle(v) for v in items]
                    if name.startswith("TUPLE"):
                        stack.push(tuple(items))
                    elif name == "FROZENSET":
                        stack.push(frozenset(_dict_key(self, k) for k in items))
                    else:
                        target = [] if name == "LIST" else {}
                        self._fill(target, items, name)
                        stack.push(target)
                elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"):
                    items = stack.pop_mark() if name.endswith("S") else stack.pop(1 if name == "APPEND" else 2)
                    self._fill(stack.top(), [self.settle(v) for v in items], name)
                elif name in ("GLOBAL", "STACK_GLOBAL"):
                    module, attr = arg.partition(" ")[::2] if name == "GLOBAL" else stack.pop(2)
                    if not (isinstance(module, str) and isinstance(attr, str)):
                        raise _Unreadable("STACK_GLOBAL of something else than two strings")
                    if (module, attr) not in self.globals:
                        raise self.refuse(f"{module}.{attr}"[:120], _ALLOCATING.get(_python3_name(module, attr)))
                    stack.push(self.globals[(module, attr)])
                elif name == "REDUCE":
                    func, args = stack.pop(2)
                    if not isinstance(func, _Global) or func.call is None or not isinstance(args, tuple):
                        raise _Unreadable("REDUCE of something else than a known global and a tuple")
                    stack.push(func.call(*args))
                elif name == "BUILD":
                    state = self.settle(stack.pop()[0])
                    target = stack.top()
                    if not isinstance(target, (_DtypeRecipe, _ArrayRecipe)):
                        raise self.refuse(f"the state of a {type(target).__name__}")
                    target.build(self, state)
                elif name not in ("PROTO", "FRAME", "READONLY_BUFFER"):
                    # INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT*, PERSID, BINPERSID, NEXT_BUFFER: other objects
                    raise self.refuse(f"the {name} instruction")
            except _Unreadable as e:
                raise _corrupt(self.name, ".pkl", str(e)) from None
        raise _corrupt(self.name, ".pkl", "no STOP")


_PUSH_ARGUMENT = frozenset(["INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                            "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"]) | _STRINGS
_PUSH_NEW: Dict[str, Callable[[], Any]] = {
    "NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False,
    "EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_SET": set, "EMPTY_TUPLE": tuple,
}


def load_pkl(path: str, name: str) -> Any:
    """Read a ``.pkl`` checkpoint (see the module docstring); ``name`` (the path the user gave) is
    used in messages."""
    with open(path, "rb") as f:
        file_bytes = os.fstat(f.fileno()).st_size
        budget = _Budget(name, file_bytes)
        if f.read(4) == b"PK\x03\x04":
            raise CheckpointReadError(f"checkpoint {name}: is a PyTorch zip archive, not a pickle; name it .pth")
        f.seek(0)
        survey = _Survey(f, name, ".pkl", budget)  # refuses what would pass the budget, before building
        f.seek(0)
        if unsafe_pickle_allowed():
            return pickle.load(f, encoding="latin1")
        return _ModelZooReader(name, _Budget(name, file_bytes), survey.fetched).run(f)


# ----------------------------------------------------------------------------- .pth / .pyth
# torch < 1.6 files begin with a pickled magic number (protocol 2, LONG1 of 10 bytes)
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _check_pth_zip(f: BinaryIO, name: str, budget: _Budget) -> None:
    """Refuse a ``.pth`` zip whose entries would inflate past the budget, that is TorchScript, or
    whose ``data.pkl`` names a global that allocates from a number."""
    try:
        with zipfile.ZipFile(_Clamped(f)) as archive:
            entries = archive.infolist()
            if any(e.filename.rsplit("/", 1)[-1] == "constants.pkl" for e in entries) and not unsafe_pickle_allowed():
                raise _refusal(name, "a TorchScript archive", "it holds code")  # torch.load would run it
            for entry in entries:
                shown = entry.filename[:120]
                if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise _corrupt(name, ".pth/.pkl", f"{shown} compressed with method {entry.compress_type}")
                if entry.header_offset + entry.compress_size > budget.file_bytes or (
                        entry.compress_type == zipfile.ZIP_STORED and entry.compress_size != entry.file_size):
                    raise _corrupt(name, ".pth/.pkl", f"{shown} declares more bytes than the file holds")
                if entry.file_size > _SLACK_BYTES and entry.file_size > budget.ratio * max(entry.compress_size, 1):
                    raise CheckpointReadError(
                        f"checkpoint {name}: {shown} inflates {_size(entry.compress_size)} to "
                        f"{_size(entry.file_size)}, more than {budget.ratio:g} times (a zip bomb?); if you "
                        f"trust it, raise {MAX_RATIO_ENV}")
                budget.charge(entry.file_size, f"{shown} inflates to {_size(entry.file_size)}")
            for entry in (e for e in entries if e.filename.endswith(".pkl")):
                with archive.open(entry) as pkl:
                    survey = _Survey(io.BytesIO(pkl.read()), name, ".pth/.pkl", budget)
                for key in sorted({_python3_name(*g) for g in survey.globals} & set(_ALLOCATING)):
                    if not unsafe_pickle_allowed():
                        raise _refusal(name, ".".join(key), _ALLOCATING[key])
                if ("?", "?") in survey.globals:
                    raise _corrupt(name, ".pth/.pkl", f"{entry.filename[:120]} names a global it computes")
    except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError, struct.error) as e:
        raise _corrupt(name, ".pth/.pkl", type(e).__name__) from None


def load_pth(path: str, name: str) -> Any:
    """``torch.load`` a ``.pth`` / ``.pyth`` checkpoint with ``weights_only=True`` once its zip was
    checked (full pickle only when allowed; the size checks apply then too)."""
    with open(path, "rb") as f:
        budget = _Budget(name, os.fstat(f.fileno()).st_size)
        head = f.read(512)
        f.seek(0)
        if head.startswith(b"PK\x03\x04"):
            _check_pth_zip(f, name, budget)
        elif not unsafe_pickle_allowed():
            if head.startswith(_LEGACY_MAGIC) or head[257:262] == b"ustar":
                raise UnsafeCheckpointError(
                    f"checkpoint {name}: a legacy (PyTorch < 1.6) checkpoint, whose sizes cannot be checked "
                    f"before torch.load allocates them; re-save it with a recent PyTorch, or {_OPT_IN}")
            raise _corrupt(name, ".pth/.pkl", "not a PyTorch zip archive")
    if unsafe_pickle_allowed():
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # an object weights_only refuses to build
        if found is None:  # not a pickle of this kind at all: corrupt or truncated
            raise
        raise _refusal(name, found.group(1)) from None


# ----------------------------------------------------------------------------- .safetensors
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                         "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit


def _check_safetensors_header(f: BinaryIO, name: str, budget: _Budget) -> None:
    """Every tensor of the header lies inside the file and has as many bytes as its shape needs."""
    head = f.read(8)
    if len(head) < 8:
        raise _corrupt(name, ".safetensors", "no header")
    length = int.from_bytes(head, "little")
    if length > min(_MAX_SAFETENSORS_HEADER, budget.file_bytes - 8):
        raise _corrupt(name, ".safetensors", f"a header of {length} bytes")
    budget.charge(8 * length, "its header")  # parsed JSON takes several times its text
    try:
        header = json.loads(f.read(length))
    except (ValueError, RecursionError):
        raise _corrupt(name, ".safetensors", "a header that is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(name, ".safetensors", "a header that is not a JSON object")
    data_bytes = budget.file_bytes - 8 - length
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shown = repr(key[:80])
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = all(type(v) is int and v >= 0 for v in [begin, end, *shape]) and begin <= end <= data_bytes
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _corrupt(name, ".safetensors", f"tensor {shown} has a bad shape or offsets outside the file")
        if dtype in _SAFETENSORS_ITEMSIZE and math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype] != end - begin:
            raise _corrupt(name, ".safetensors", f"tensor {shown} has {end - begin} bytes for its {len(shape)}-d shape")
        budget.charge(end - begin, "its tensors")


def load_safetensors(path: str, name: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors and the metadata of a ``.safetensors`` file, its header checked first."""
    from safetensors import SafetensorError, safe_open

    with open(path, "rb") as f:
        _check_safetensors_header(f, name, _Budget(name, os.fstat(f.fileno()).st_size))
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except SafetensorError as e:
        raise _corrupt(name, ".safetensors", str(e).splitlines()[0][:120] if str(e) else "SafetensorError") from None


def read_state_dict(path: str, nested_keys: Sequence[str] = ("model", "state_dict")) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file (``torch.load(weights_only=True)``), unwrapping ``{"model": ...}``,
    or of a ``.safetensors`` file.

    Raises:
        FileNotFoundError / CheckpointReadError: one line naming ``path``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".safetensors"):  # tensors only, header checked first
        return load_safetensors(path, path)[0]
    try:  # torch.load(weights_only=True) once the zip's sizes are checked
        data = load_pth(path, path)
    except CheckpointReadError:  # one line already
        raise
    except Exception as e:  # see MaskFormerCheckpointer._load_file
        reason = first_line(e)[:160]
        raise CheckpointReadError(f"{path}: not a readable .pth file ({type(e).__name__}: {reason})") from e
    for key in nested_keys:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointReadError(f"{path}: not a state dict of tensors")
    return data
