"""Reading a Hugging Face model folder without trusting it (shared by the HF importers).

A ``save_pretrained`` folder or hub repository is untrusted input: its JSON files size the model
that gets built, and transformers would act on some of their keys (run the folder's Python code
for ``auto_map``, download another model for ``backbone``, read other files). So the importers
never hand transformers a path:

* **JSON is read and checked here first.** :func:`read_json` reads ``config.json`` /
  ``preprocessor_config.json`` (regular files of at most :data:`MAX_JSON_BYTES`, UTF-8, a JSON
  object); :func:`check_fields` checks every field the import uses against a table of
  :class:`Field` (type and range, e.g. ``integer(1, 4096)``); :func:`refuse_actions` refuses the
  keys that make transformers run or fetch something. The same tables say which maskformer_d2
  config key a field becomes (:func:`field_values`), so what is checked is what is converted.
* **Nothing from the folder runs.** A config with ``auto_map`` (custom code) is refused; transformers
  gets a config object built from the checked dict and a dict of tensors, with
  ``trust_remote_code=False``, so it never reads the folder, asks on stdin or imports its code.
* **Weights are read without unpickling code**, by :mod:`maskformer_d2.checkpoint.safe_load`:
  ``model.safetensors`` first, else ``pytorch_model.bin`` through ``torch.load(weights_only=True)``
  (full pickle only with ``--allow-unsafe-pickle`` / ``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``).
* **Sizes are checked before allocating**: each field's bounds, then the model's parameter count
  (built on the meta device, which allocates nothing) against what the weights file can hold.

Every problem is one :class:`~maskformer_d2.errors.HFImportError` line, ``<file>: <field>: <what is
wrong>``.
"""
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from ..checkpoint.safe_load import load_pth, load_safetensors
from ..errors import CheckpointReadError, HFImportError, first_line

__all__ = [
    "CONFIG",
    "PREPROCESSOR",
    "MAX_JSON_BYTES",
    "MAX_LABELS",
    "Field",
    "FieldError",
    "shown",
    "integer",
    "number",
    "flag",
    "one_of",
    "text",
    "integers",
    "numbers",
    "stage_names",
    "check_fields",
    "check_labels",
    "field_values",
    "refuse_actions",
    "read_json",
    "local_file",
    "resolve_folder",
    "build_config",
    "load_model",
]

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
MAX_JSON_BYTES = 16 * 2**20  # ~100x the config of a model with thousands of classes
MAX_LABELS = 100_000  # classes of a model (ADE20K-full has 847, LVIS 1203)

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


def check_labels(data: Mapping[str, Any], file: str) -> None:
    """``id2label`` maps class numbers ("0", "1", ...) to names, at most :data:`MAX_LABELS` of them,
    as many as ``num_labels`` says if it is there; ``label2id`` is an object."""
    id2label = data.get("id2label")
    if id2label is not None:
        if not (isinstance(id2label, Mapping) and 0 < len(id2label) <= MAX_LABELS):
            raise HFImportError(f"{file}: id2label: must be an object of 1 to {MAX_LABELS} class names, "
                                f"not {shown(id2label)}")
        for key, name in id2label.items():
            if not (re.fullmatch(r"[0-9]{1,6}", key) and int(key) < MAX_LABELS):
                raise HFImportError(f"{file}: id2label: {shown(key)} must be a class number from 0 to {MAX_LABELS - 1}")
            if not (isinstance(name, str) and len(name) <= 256):
                raise HFImportError(f"{file}: id2label.{key}: must be a class name (a string of at most 256 "
                                    f"characters), not {shown(name)}")
        num_labels = data.get("num_labels")
        if num_labels is not None and num_labels != len(id2label):
            raise HFImportError(f"{file}: num_labels: {shown(num_labels)}, but id2label names {len(id2label)} classes")
    if data.get("label2id") is not None and not isinstance(data["label2id"], Mapping):
        raise HFImportError(f"{file}: label2id: must be an object, not {shown(data['label2id'])}")


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


def local_file(source: str, name: str) -> Optional[str]:
    """The path of ``name`` in ``source`` (a folder, or a hub id whose file transformers downloads
    into its cache or finds there), None if the source has no such file.

    Raises:
        OSError: a hub id that cannot be reached and is not in the cache, or not a model name.
    """
    if os.path.isdir(source):
        path = os.path.join(source, name)
        return path if os.path.lexists(path) else None
    from transformers.utils import cached_file

    try:
        return cached_file(source, name, _raise_exceptions_for_missing_entries=False)
    except OSError:
        raise
    except Exception as e:  # HFValidationError and the like: not a folder nor a repository name
        raise OSError(first_line(e) or type(e).__name__) from None


def resolve_folder(source: str) -> str:
    """The local folder of ``source``: itself, or for a hub id the cache folder that receives its
    config, preprocessor config and weights (downloaded when not there yet).

    Raises:
        OSError: no such folder, or a hub id that cannot be reached and is not in the cache.
    """
    if os.path.isdir(source):
        return source
    config = local_file(source, CONFIG)
    if config is None:
        raise OSError(f"no {CONFIG}")
    for name in (PREPROCESSOR, SAFETENSORS):
        local_file(source, name)
    if not os.path.isfile(os.path.join(os.path.dirname(config), SAFETENSORS)):
        local_file(source, PYTORCH_BIN)
    return os.path.dirname(config)


def _one_line(e: BaseException) -> str:
    """An exception of transformers (whose first line may be only a header) as one short line."""
    return " ".join(str(e).split())[:200] or type(e).__name__


def build_config(config_class: type, data: Dict[str, Any]) -> Any:
    """``config_class.from_dict(data)`` for a checked ``config.json``; what transformers still
    refuses becomes one line."""
    try:
        return config_class.from_dict(dict(data))
    except Exception as e:
        raise HFImportError(f"{CONFIG}: transformers cannot build a config from it "
                            f"({type(e).__name__}: {_one_line(e)})") from None


# ----------------------------------------------------------------------------- model and weights
def _read_weights(folder: str, min_bytes: int) -> Tuple[str, Dict[str, torch.Tensor]]:
    """(file name, tensors) of ``model.safetensors``, else ``pytorch_model.bin``, once the file is
    known to be large enough for the model (``min_bytes``)."""
    for name in (SAFETENSORS, PYTORCH_BIN):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            break
    else:
        raise HFImportError(f"no {SAFETENSORS} or {PYTORCH_BIN} (sharded checkpoints are not supported)")
    size = os.path.getsize(path)
    if size < min_bytes:
        raise HFImportError(f"{name}: {size} bytes cannot hold the weights of the model {CONFIG} describes "
                            f"(at least {min_bytes} bytes in 16-bit); the files do not belong together")
    if name == SAFETENSORS:
        state = load_safetensors(path, name)[0]
    else:
        state = load_pth(path, name)
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise CheckpointReadError(f"checkpoint {name}: not a state dict of tensors")
    return name, state


def load_model(model_class: type, folder: str, hf_config: Any, rebuilt: Sequence[str] = ()) -> Any:
    """``model_class`` with the folder's weights, built from a checked config object.

    The model is first built on the meta device to count its parameters; the weights file must be
    able to hold them before it is read. transformers then gets only the config and the tensors.

    Args:
        rebuilt: suffixes of state-dict entries a checkpoint may lack because the model computes
            them from its config (buffers); any other missing weight is an error.

    Raises:
        HFImportError: the model cannot be built, the file is too small, weights are missing or
            have other shapes than the config gives them.
        CheckpointReadError / UnsafeCheckpointError: the weights file is unreadable or holds code.
    """
    try:
        with torch.device("meta"):
            skeleton = model_class(hf_config)
    except Exception as e:
        raise HFImportError(f"{CONFIG}: transformers cannot build this model "
                            f"({type(e).__name__}: {_one_line(e)})") from None
    num_params = sum(p.numel() for p in skeleton.parameters())
    del skeleton
    name, state = _read_weights(folder, 2 * num_params)
    try:
        model, info = model_class.from_pretrained(
            None, config=hf_config, state_dict=state, trust_remote_code=False, dtype=torch.float32,
            ignore_mismatched_sizes=True, output_loading_info=True)
    except Exception as e:
        raise HFImportError(f"{name}: transformers cannot load it ({type(e).__name__}: {_one_line(e)})") from None
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", ())]
    if mismatched:
        raise HFImportError(f"{name}: {len(mismatched)} tensors do not have the shapes {CONFIG} gives them "
                            f"(e.g. {', '.join(sorted(mismatched)[:3])})")
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith(tuple(rebuilt))]
    if missing:
        raise HFImportError(f"{name}: the checkpoint lacks {len(missing)} weights of the model "
                            f"(e.g. {', '.join(sorted(missing)[:3])}), which would be random")
    return model.eval()
