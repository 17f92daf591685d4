"""Reading a Hugging Face model folder without trusting it (shared by the HF importers).

A ``save_pretrained`` folder or hub repository is untrusted input: its JSON files size the model
that gets built, and transformers would act on some of their keys (run the folder's Python code
for ``auto_map``, download another model for ``backbone``, read other files). So the importers
never hand transformers a path:

* **JSON is read and checked first** (:mod:`maskformer_d2.checkpoint.model_json`).
  :func:`read_json` reads ``config.json`` / ``preprocessor_config.json`` (regular files of at most
  :data:`MAX_JSON_BYTES`, UTF-8, a JSON object); :func:`check_fields` checks every field the import
  uses against a table of :class:`Field` (type and range, e.g. ``integer(1, 4096)``);
  :func:`refuse_actions` refuses the keys that make transformers run or fetch something. The same
  tables say which maskformer_d2 config key a field becomes (:func:`field_values`), so what is
  checked is what is converted.
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
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..checkpoint.model_json import shown
from ..checkpoint.safe_load import load_pth, load_safetensors
from ..errors import CheckpointReadError, HFImportError, first_line

__all__ = [
    "CONFIG",
    "PREPROCESSOR",
    "MAX_LABELS",
    "check_labels",
    "local_file",
    "resolve_folder",
    "build_config",
    "load_model",
]

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
MAX_LABELS = 100_000  # classes of a model (ADE20K-full has 847, LVIS 1203)


# ----------------------------------------------------------------------------- labels
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


# ----------------------------------------------------------------------------- files
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
