"""Model JSON files (``config.json`` and the like) read and checked without trusting them.

A model folder's JSON sizes the model that gets built from it, so it is untrusted input:
:func:`read_json` reads a regular file of at most :data:`MAX_JSON_BYTES` that must be a UTF-8 JSON
object; :func:`check_fields` checks the fields a caller uses against a table of :class:`Field`
(type and range, e.g. ``integer(1, 4096)``) and :func:`refuse_actions` refuses the keys that make
transformers run or fetch something. Every problem is one
:class:`~maskformer_d2.errors.HFImportError` line, ``<file>: <field>: <what is wrong>``.
Used by the Hugging Face importers (:mod:`maskformer_d2.convert.hf_folder`) and by the DINOv3
backbone, which builds a ViT from a local transformers folder's ``config.json``.
"""
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from ..errors import HFImportError, first_line

__all__ = [
    "MAX_JSON_BYTES",
    "Field",
    "FieldError",
    "shown",
    "integer",
    "number",
    "flag",
    "one_of",
    "text",
    "optional",
    "integers",
    "numbers",
    "stage_names",
    "check_fields",
    "field_values",
    "refuse_actions",
    "read_json",
]

MAX_JSON_BYTES = 16 * 2**20  # ~100x the config of a model with thousands of classes

# Keys transformers acts on beyond building the model: what it would do instead
_ACTIONS = {
    "auto_map": "it asks to run Python code shipped with the model, which maskformer_d2 never does",
    "quantization_config": "it asks transformers to quantize the model (with other libraries)",
    "transformers_weights": "it points transformers at another weights file",
    "fusion_config": "it asks transformers to patch the model's modules",
    "backbone": "it names a backbone for transformers to download instead of backbone_config",
    "backbone_kwargs": "it asks transformers to build a backbone from a name instead of backbone_config",
}


# ----------------------------------------------------------------------------- field checks
class FieldError(ValueError):
    """One value is wrong; the message says what it must be (the caller adds file and field)."""


Check = Callable[[Any], Any]  # a value -> the same value as a plain Python type, or FieldError


def shown(value: Any) -> str:
    """``repr(value)``, cut to 40 characters for a message."""
    text_ = repr(value)
    return text_ if len(text_) <= 40 else text_[:37] + "..."


def _fail(expected: str, value: Any) -> FieldError:
    return FieldError(f"must be {expected}, not {shown(value)}")


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is not a number here; 5e7 (a JSON float) is not an integer


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def integer(lo: int, hi: int) -> Check:
    """An integer in ``[lo, hi]``."""
    def check(value: Any) -> int:
        if not (_is_int(value) and lo <= value <= hi):
            raise _fail(f"an integer from {lo} to {hi}", value)
        return value
    return check


def number(lo: float, hi: float, *, above: bool = False) -> Check:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``above``), as a float."""
    def check(value: Any) -> float:
        if not (_is_number(value) and (value > lo if above else value >= lo) and value <= hi):
            raise _fail(f"a number {'>' if above else '>='} {lo:g} and <= {hi:g}", value)
        return float(value)
    return check


def flag() -> Check:
    """``true`` or ``false``."""
    def check(value: Any) -> bool:
        if type(value) is not bool:
            raise _fail("true or false", value)
        return value
    return check


def one_of(*choices: Any) -> Check:
    """One of ``choices`` (strings, numbers or None)."""
    def check(value: Any) -> Any:
        if not any(type(value) is type(c) and value == c for c in choices):
            raise _fail("one of " + ", ".join(repr(c) for c in choices), value)
        return value
    return check


def text(max_length: int = 64) -> Check:
    """A string of at most ``max_length`` characters (checked for meaning elsewhere)."""
    def check(value: Any) -> str:
        if not (isinstance(value, str) and len(value) <= max_length):
            raise _fail(f"a string of at most {max_length} characters", value)
        return value
    return check


def optional(check: Check) -> Check:
    """``null`` or what ``check`` accepts."""
    def check_optional(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except FieldError as e:
            raise FieldError(f"{e} (or null)") from None
    return check_optional


def _sequence(item: Check, what: str, min_len: int, max_len: int) -> Check:
    expected = f"a list of {min_len if min_len == max_len else f'{min_len} to {max_len}'} {what}"

    def check(value: Any) -> List[Any]:
        if not (isinstance(value, (list, tuple)) and min_len <= len(value) <= max_len):
            raise _fail(expected, value)
        try:
            return [item(v) for v in value]
        except FieldError:
            raise _fail(expected, value) from None
    return check


def integers(lo: int, hi: int, min_len: int = 1, max_len: int = 8) -> Check:
    """A list of ``min_len``..``max_len`` integers in ``[lo, hi]``."""
    return _sequence(integer(lo, hi), f"integers from {lo} to {hi}", min_len, max_len)


def numbers(lo: float, hi: float, length: int, *, above: bool = False) -> Check:
    """A list of exactly ``length`` finite numbers in ``[lo, hi]`` (``(lo, hi]`` with ``above``)."""
    bound = f"{'>' if above else '>='} {lo:g} and <= {hi:g}"
    return _sequence(number(lo, hi, above=above), f"numbers {bound}", length, length)


def stage_names(max_len: int = 8) -> Check:
    """A list of backbone stage names, ``"stem"`` or ``"stage1"``..."""
    def name(value: Any) -> str:
        if not (isinstance(value, str) and re.fullmatch(r"stem|stage[1-9]", value)):
            raise FieldError(value)
        return value
    return _sequence(name, "stage names ('stage1', ...)", 0, max_len)


@dataclass(frozen=True)
class Field:
    """One field of a HF config: its dotted path, the values it may take, and the maskformer_d2
    config key it becomes (None: checked only)."""

    path: str
    check: Check
    cfg_key: Optional[str] = None


_MISSING = object()


def _lookup(data: Any, path: str, where: str) -> Any:
    """``data["a"]["b"]`` (or attributes ``data.a.b``) for ``path`` "a.b"; _MISSING if absent.

    Raises:
        HFImportError: a part on the way is not an object (``where`` prefixes the message).
    """
    value, seen = data, []
    for part in path.split("."):
        if value is _MISSING or value is None:
            return _MISSING
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif seen and not hasattr(value, "to_dict"):  # JSON: a sub-config that is not an object
            raise HFImportError(f"{where}{'.'.join(seen)}: must be an object, not {shown(value)}")
        else:
            value = getattr(value, part, _MISSING)
        seen.append(part)
    return value


def _checked(field: Field, value: Any, where: str, root: str) -> Any:
    if value is _MISSING:
        raise HFImportError(f"{where}{root}{field.path}: missing")
    try:
        return field.check(value)
    except FieldError as e:
        raise HFImportError(f"{where}{root}{field.path}: {e}") from None


def check_fields(data: Mapping[str, Any], fields: Iterable[Field], file: str, root: str = "") -> None:
    """Check the ``fields`` that ``data`` (a parsed JSON file) has; absent ones keep HF's default.

    Args:
        root: the fields' place in ``data`` ("backbone_config."), also in the messages.

    Raises:
        HFImportError: ``<file>: <field>: must be ..., not <value>``.
    """
    for field in fields:
        value = _lookup(data, root + field.path, f"{file}: ")
        if value is not _MISSING:
            _checked(field, value, f"{file}: ", root)


def field_values(config: Any, fields: Iterable[Field], root: str = "") -> Dict[str, Any]:
    """``{cfg_key: value}`` of the ``fields`` that become config values, read from a HF config
    object (or dict) and checked like the JSON was."""
    out = {}
    for field in fields:
        if field.cfg_key is not None:
            out[field.cfg_key] = _checked(field, _lookup(config, root + field.path, ""), "", root)
    return out


def refuse_actions(data: Mapping[str, Any], file: str) -> None:
    """Refuse the keys that make transformers run code or fetch files rather than build a model
    (``auto_map`` also in sub-configs), set to anything but null / empty."""
    for key, why in _ACTIONS.items():
        if data.get(key) not in (None, {}, [], ""):
            raise HFImportError(f"{file}: {key}: refused, {why}")
    for name, sub in data.items():
        if isinstance(sub, Mapping) and sub.get("auto_map") not in (None, {}):
            raise HFImportError(f"{file}: {name}.auto_map: refused, {_ACTIONS['auto_map']}")




# ----------------------------------------------------------------------------- files
def read_json(folder: str, name: str) -> Optional[Dict[str, Any]]:
    """``folder/name`` parsed as a JSON object, or None when there is no such file.

    Raises:
        HFImportError: not a regular file, larger than :data:`MAX_JSON_BYTES`, not UTF-8 JSON, or not
            an object; one line naming ``name``.
    """
    path = os.path.join(folder, name)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise HFImportError(f"{name}: not a regular file")
    if info.st_size > MAX_JSON_BYTES:
        raise HFImportError(f"{name}: {info.st_size} bytes; a model's JSON file has at most {MAX_JSON_BYTES}")
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise HFImportError(f"{name}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise HFImportError(f"{name}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:  # an integer of 5000 digits, nesting 100000 deep
        raise HFImportError(f"{name}: not valid JSON ({type(e).__name__}: {first_line(e)[:80]})") from None
    if not isinstance(data, dict):
        raise HFImportError(f"{name}: must be a JSON object, not a {type(data).__name__}")
    return data
