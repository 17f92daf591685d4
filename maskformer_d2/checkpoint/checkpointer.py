"""Loading MaskFormer weights strictly, with one clear error when they do not fit the config.

detectron2's ``DetectionCheckpointer`` only warns about missing keys and silently skips tensors whose
shape differs from the model's, so a checkpoint for 150 classes "loads" into a 134-class model and
the mistake shows up as garbage predictions. ``MaskFormerCheckpointer`` keeps everything d2 does
(local paths and http(s) URLs through PathManager, d2 model-zoo ``.pkl`` files, the
``matching_heuristics`` convention for ImageNet-pretrained backbones) and adds:

* a full-model checkpoint must fit exactly: any missing key, unexpected key or shape mismatch raises
  :class:`CheckpointMismatchError` whose message names the keys and the config key to check;
* a backbone-only checkpoint (``"matching_heuristics": True``, as written by ``tools/convert-*``)
  may leave the head uninitialised as in d2, but a shape mismatch where it loads (e.g. the
  backbone) or "nothing matched" still raises;
* no file runs code or sizes memory while it is read (:mod:`maskformer_d2.checkpoint.safe_load`):
  ``.safetensors`` hold tensors only, ``.pkl`` are interpreted without a real unpickler, ``.pth``
  go through ``torch.load(weights_only=True)`` once their zip was checked; anything else is
  refused (:class:`UnsafeCheckpointError`) unless the user allows full pickle explicitly;
* unreadable or missing files raise one-line errors (:class:`CheckpointReadError`,
  ``FileNotFoundError``), and so does a state dict whose keys are not strings or whose values
  are not numeric arrays / tensors (or numbers), naming the first bad key;
* checkpoints are written atomically (a temporary file in the same folder, flushed and fsynced,
  then renamed; ``last_checkpoint`` likewise, after it), so an interruption never leaves a
  truncated checkpoint under a checkpoint's name nor destroys the one ``last_checkpoint`` names;
* ``resume_or_load(resume=True)`` falls back to the newest complete checkpoint, with a warning,
  when the one ``last_checkpoint`` names is missing or unreadable.
"""
import contextlib
import logging
import os
import re
from collections import Counter, OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names
from fvcore.common.checkpoint import _IncompatibleKeys

from ..errors import CheckpointMismatchError, CheckpointReadError, UnsafeCheckpointError
from .atomic import leftovers_of_dead_writers, write_atomically
from .remote import download, is_url
from .safe_load import load_pkl, load_pth, load_safetensors

__all__ = [
    "MaskFormerCheckpointer",
    "CheckpointMismatchError",
    "CheckpointReadError",
    "UnsafeCheckpointError",
    "tagged_checkpoint",
    "resume_candidates",
    "describe_mismatch",
    "summarize_keys",
]

logger = logging.getLogger(__name__)

# Entries a checkpoint may lack because the model rebuilds them from the config alone.
_DERIVED_FROM_CONFIG = (
    re.compile(r"(^|\.)criterion\.empty_weight$"),  # ones with NO_OBJECT_WEIGHT last
)

# Which config key most likely explains a misfit key, first match wins (checked in this order).
_HINTS: Sequence[Tuple[re.Pattern, str]] = [
    (re.compile(r"class_embed|criterion\.empty_weight"), "MODEL.SEM_SEG_HEAD.NUM_CLASSES"),
    (re.compile(r"query_embed"), "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"),
    (
        re.compile(r"pixel_decoder\.(transformer|input_proj)"),
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME (and TRANSFORMER_ENC_LAYERS)",
    ),
    (re.compile(r"predictor\.transformer\.decoder\.layers"), "MODEL.MASK_FORMER.DEC_LAYERS"),
    (
        re.compile(r"predictor\.input_proj"),
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE (and ENFORCE_INPUT_PROJ)",
    ),
    (re.compile(r"^backbone\."), "MODEL.BACKBONE.NAME (and MODEL.RESNETS.* / MODEL.SWIN.*)"),
    (re.compile(r"mask_embed|mask_features"), "MODEL.SEM_SEG_HEAD.MASK_DIM"),
    (re.compile(r"pixel_decoder\."), "MODEL.SEM_SEG_HEAD.CONVS_DIM"),
    (re.compile(r"predictor\."), "MODEL.MASK_FORMER.HIDDEN_DIM (and DIM_FEEDFORWARD)"),
]
_FALLBACK_HINT = "MODEL.META_ARCHITECTURE"


# ----------------------------------------------------------------------------- messages
def _common_prefix(keys: Sequence[str]) -> str:
    parts = [k.split(".") for k in keys]
    prefix = []
    for column in zip(*parts):
        if any(c != column[0] for c in column):
            break
        prefix.append(column[0])
    return ".".join(prefix)


def summarize_keys(keys: Iterable[str], max_groups: int = 3) -> str:
    """Compress state-dict keys into a few ``prefix.*`` patterns, e.g. ``sem_seg_head.predictor.*``.

    Keys are grouped by their first two dotted components; each group is shown by its longest
    common dotted prefix (or the key itself when alone).
    """
    groups: "OrderedDict[str, List[str]]" = OrderedDict()
    for k in keys:
        groups.setdefault(".".join(k.split(".")[:2]), []).append(k)
    shown = []
    for members in groups.values():
        if len(members) == 1:
            shown.append(members[0])
        else:
            shown.append((_common_prefix(members) or members[0].split(".")[0]) + ".*")
    if len(shown) > max_groups:
        shown = shown[:max_groups] + [f"... {len(shown) - max_groups} more"]
    return ", ".join(shown)


def _hints(keys: Iterable[str], max_hints: int = 2) -> List[str]:
    found: List[str] = []
    for k in keys:
        for pattern, hint in _HINTS:
            if pattern.search(k):
                if hint not in found:
                    found.append(hint)
                break
    ordered = [h for _, h in _HINTS if h in found]  # most specific first
    return ordered[:max_hints] or [_FALLBACK_HINT]


def describe_mismatch(
    name: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    shape_mismatches: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]],
) -> str:
    """One line saying how a checkpoint misfits the model and which config key to check.

    Example: ``checkpoint model.pkl: 2 shape mismatches (sem_seg_head.predictor.class_embed.weight:
    checkpoint (151, 256) vs model (134, 256), ...); is MODEL.SEM_SEG_HEAD.NUM_CLASSES right?``
    """
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing ({summarize_keys(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({summarize_keys(unexpected)})")
    if shape_mismatches:
        shown = [
            f"{k}: checkpoint {tuple(c)} vs model {tuple(m)}" for k, c, m in shape_mismatches[:3]
        ]
        if len(shape_mismatches) > 3:
            shown.append(f"... {len(shape_mismatches) - 3} more")
        parts.append(f"{len(shape_mismatches)} shape mismatches ({', '.join(shown)})")
    # shape mismatches name the config key most precisely, so they lead the hint
    hints = _hints([k for k, _, _ in shape_mismatches] + list(missing) + list(unexpected))
    question = f"is {hints[0]} right?" if len(hints) == 1 else f"are {' and '.join(hints)} right?"
    return f"checkpoint {name}: {', '.join(parts)}; {question}"


# ----------------------------------------------------------------------------- writing
LAST_CHECKPOINT = "last_checkpoint"


def tagged_checkpoint(save_dir: str) -> str:
    """The basename ``<save_dir>/last_checkpoint`` names ("" without one)."""
    try:
        with open(os.path.join(save_dir, LAST_CHECKPOINT)) as f:
            return f.read().strip()
    except OSError:
        return ""


def resume_candidates(save_dir: str) -> List[str]:
    """Checkpoints to resume from, best first: the one ``last_checkpoint`` names, then every other
    ``.pth`` of ``save_dir``, newest first (temporary files of interrupted writes are never
    candidates)."""
    if not save_dir or not os.path.isdir(save_dir):
        return []
    files = [os.path.join(save_dir, f) for f in os.listdir(save_dir) if f.endswith(".pth") and not f.startswith(".")]
    files.sort(key=os.path.getmtime, reverse=True)
    tagged = tagged_checkpoint(save_dir)
    if tagged and os.path.join(save_dir, tagged) in files:
        files.remove(os.path.join(save_dir, tagged))
        files.insert(0, os.path.join(save_dir, tagged))
    return files


# ----------------------------------------------------------------------------- checkpointer
def _is_url(path: str) -> bool:
    return is_url(path)


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


# numpy dtypes torch.from_numpy turns into tensors (in native byte order)
_WEIGHT_DTYPES = frozenset(np.dtype(c) for c in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
                                                 "f2", "f4", "f8", "c8", "c16"))


def _shown(key: Any) -> str:
    """A key for a message, short and safe to print whatever the file put there."""
    if isinstance(key, str):
        return repr(key[:100])
    if type(key) in (int, bool) and abs(key) < 10**18:
        return repr(key)
    return f"a key of type {type(key).__name__}"


def _describe_value(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a numpy array of dtype {value.dtype.name if value.dtype.kind != 'V' else 'void'}"
    if isinstance(value, torch.Tensor):
        kind = "quantized" if value.is_quantized else "meta" if value.is_meta else str(value.layout)[6:]
        return f"a {kind} tensor"
    return f"a {type(value).__name__}"


def _checked_state_dict(state: Dict[Any, Any], name: str) -> Dict[str, Any]:
    """``state`` (a checkpoint's "model") as detectron2 can load it: numbers become 0-d arrays and
    arrays native byte order. A key that is not a string or a value that is not a numeric array,
    tensor or number is one :class:`CheckpointReadError` naming the file and the first bad key."""
    checked = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointReadError(
                f"checkpoint {name}: its model has {_shown(key)} as a key; a state dict maps parameter names "
                "(strings) to tensors")
        if isinstance(value, (bool, int, float, np.number, np.bool_)):
            value = np.asarray(value)  # an int beyond int64 becomes an object array, refused below
        if isinstance(value, np.ndarray) and value.dtype.newbyteorder("=") in _WEIGHT_DTYPES:
            value = value if value.dtype.isnative else value.astype(value.dtype.newbyteorder("="))
        elif not (isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_meta
                  and not value.is_quantized):
            raise CheckpointReadError(
                f"checkpoint {name}: its model entry {_shown(key)} is {_describe_value(value)}; a state dict "
                "holds numeric arrays or tensors")
        checked[key] = value
    return checked


class MaskFormerCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses weights which do not fit the model.

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        strict: raise :class:`CheckpointMismatchError` when a full-model checkpoint has missing or
            unexpected keys, and on shape mismatches for any checkpoint. ``False`` gives d2's
            behaviour (warnings only).
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = True, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict = strict
        self._loading: Optional[str] = None

    # ---- reading
    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """Load ``path`` (a local file, an http(s) URL or ``detectron2://...``); see the class
        docstring for the checks.

        A URL is fetched by :func:`maskformer_d2.checkpoint.remote.download` (into the download cache, under a
        name derived from the URL, size-capped) before detectron2 sees the path, so detectron2
        never downloads anything itself; the URL's query (``?matching_heuristics=True``) keeps
        detectron2's meaning.
        """
        local = path
        if path and _is_url(path):
            parts = urlsplit(path)
            local = download(urlunsplit(parts._replace(query="", fragment="")), what="checkpoint")
            if parts.query:
                local += "?" + parts.query  # detectron2 reads its options from it, then drops it
        elif path and not os.path.isfile(path):
            what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "no such file"
            raise FileNotFoundError(
                f"checkpoint {path}: {what}; set MODEL.WEIGHTS to a .pth/.pkl/.safetensors file or an "
                "http(s) URL"
            )
        self._loading = path
        try:
            return super().load(local, *args, **kwargs)
        finally:
            self._loading = None
            self._parsed_url_during_load = None  # detectron2 resets it only when loading succeeds

    def _load_file(self, filename: str) -> Dict[str, Any]:
        name = self._loading or filename
        try:
            data = self._read(filename, name)
        except CheckpointReadError:  # worded by safe_load, UnsafeCheckpointError included
            raise
        except Exception as e:  # torch.load of garbage fails in arbitrary ways (RuntimeError, KeyError, ...)
            raise CheckpointReadError(
                f"checkpoint {name}: not a readable .pth/.pkl checkpoint (truncated or corrupt: "
                f"{type(e).__name__})"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            found = type(data.get("model") if isinstance(data, dict) else data).__name__
            raise CheckpointReadError(f"checkpoint {name}: not a state dict (found {found})")
        model = data["model"]
        if filename.endswith(".pkl") and data.get("__author__") == "Caffe2" and isinstance(
            model.get("model"), dict
        ):
            # a pickled {"model": state_dict} without "__author__": d2 mistakes it for a Caffe2 file
            data = {"model": model["model"], "__author__": "unknown"}
        data["model"] = _checked_state_dict(data["model"], name)
        return data

    def _read(self, filename: str, name: str) -> Dict[str, Any]:
        """The checkpoint dict of a file, in detectron2's conventions, without running its code."""
        if filename.endswith(".safetensors"):  # tensors only, by construction
            state, meta = load_safetensors(filename, name)
            return {"model": state, "__author__": meta.get("__author__", "unknown"),
                    "matching_heuristics": meta.get("matching_heuristics") == "True"}
        if filename.endswith(".pyth"):  # pycls, which detectron2 reads with full pickle
            data = load_pth(filename, name)
            if not isinstance(data, dict) or not isinstance(data.get("model_state"), dict):
                raise CheckpointReadError(f"checkpoint {name}: not a pycls checkpoint (no 'model_state' dict)")
            state = {k: v for k, v in data["model_state"].items()
                     if not (isinstance(k, str) and k.endswith("num_batches_tracked"))}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)  # .pth, through _torch_load below
        data = load_pkl(filename, name)
        if not isinstance(data, dict):
            raise CheckpointReadError(f"checkpoint {name}: not a state dict (found {type(data).__name__})")
        if "model" in data and "__author__" in data:  # detectron2 model-zoo format
            return data
        # a Caffe2 / Detectron1 file, read the way detectron2 does
        data = data["blobs"] if isinstance(data.get("blobs"), dict) else data
        blobs = {k: v for k, v in data.items() if not (isinstance(k, str) and k.endswith("_momentum"))}
        return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f: str) -> Any:
        name = self._loading or f
        data = load_pth(f, name)
        if not isinstance(data, dict):  # detectron2 looks for "model" in it
            raise CheckpointReadError(f"checkpoint {name}: not a state dict (found {type(data).__name__})")
        return data

    # ---- writing
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        for stale in leftovers_of_dead_writers(self.save_dir):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.save_dir, stale))
                logger.warning(f"removed {os.path.join(self.save_dir, stale)}, left by an interrupted save")
        self.logger.info(f"Saving checkpoint to {path}")
        write_atomically(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        write_atomically(path, lambda f: f.write(last_filename_basename.encode()))

    # ---- resuming
    def resume_candidates(self) -> List[str]:
        """:func:`resume_candidates` of ``save_dir``."""
        return resume_candidates(self.save_dir)

    def has_checkpoint(self) -> bool:
        return bool(self.resume_candidates())

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest complete checkpoint of ``save_dir`` (``resume=True`` and one
        exists), else load only the model from ``path``."""
        candidates = self.resume_candidates() if resume else []
        tagged = tagged_checkpoint(self.save_dir)
        if resume and tagged and not os.path.isfile(os.path.join(self.save_dir, tagged)):
            logger.warning(f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} names {tagged}, which is missing")
        if not candidates:
            return self.load(path, checkpointables=[])
        failed: List[str] = []
        for candidate in candidates:
            try:
                loaded = self.load(candidate)
            except CheckpointReadError as e:
                failed.append(candidate)
                logger.warning(f"cannot resume from {candidate} ({e}); trying the next newest checkpoint")
                continue
            if failed:
                logger.warning(f"resumed from {candidate} instead of {failed[0]}, which is unreadable")
            return loaded
        raise CheckpointReadError(
            f"--resume: no readable checkpoint in {self.save_dir} ({len(failed)} tried: "
            f"{summarize_keys(os.path.basename(f) for f in failed)}); remove them or start without --resume"
        )

    # ---- checking
    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        name = self._loading or "<state dict>"
        heuristics = bool(checkpoint.get("matching_heuristics", False))
        if hasattr(self.model, "rename_checkpoint_keys"):  # e.g. EoMT: official names -> ours
            checkpoint["model"] = self.model.rename_checkpoint_keys(checkpoint["model"])
        ckpt_shapes = {k: _shape(v) for k, v in checkpoint["model"].items()}
        if heuristics and checkpoint.get("__author__") == "Caffe2":  # d2 renames these before matching
            renamed, _ = convert_c2_detectron_names(checkpoint["model"])
            ckpt_shapes = {k: _shape(v) for k, v in renamed.items()}
        model_state = self.model.state_dict()
        try:
            incompatible = super()._load_model(checkpoint)
        except ValueError as e:  # non-tensor entries, or ambiguous name matching
            raise CheckpointReadError(f"checkpoint {name}: {e}") from e

        shapes = list(incompatible.incorrect_shapes)
        misfit = {k for k, _, _ in shapes}  # d2 drops them before loading, so they also come back missing
        missing = [
            k for k in incompatible.missing_keys
            if k not in misfit and not any(p.search(k) for p in _DERIVED_FROM_CONFIG)
        ]
        if heuristics:
            pairs = _suffix_matches(model_state, ckpt_shapes)
            # Only pairs under the prefix most pairs share (e.g. "backbone.") count: generic names
            # also suffix-match elsewhere (official Swin files keep their classifier's "norm.weight",
            # which pairs with "sem_seg_head...adapter_1.norm.weight"); d2 skips those with a
            # warning, and so do we.
            prefixes = Counter(k[: len(k) - len(c)] for k, c in pairs.items())
            main_prefix = prefixes.most_common(1)[0][0] if prefixes else ""
            shapes += [
                (k, ckpt_shapes[c], tuple(model_state[k].shape))
                for k, c in pairs.items()
                if k not in misfit  # d2 passes a skipped tensor on under its own name: reported once
                and k[: len(k) - len(c)] == main_prefix and ckpt_shapes[c] != tuple(model_state[k].shape)
            ]
            if not pairs and self.strict:
                raise CheckpointMismatchError(
                    f"checkpoint {name}: none of its {len(ckpt_shapes)} tensors "
                    f"({summarize_keys(ckpt_shapes)}) match the model; is MODEL.BACKBONE.NAME right?"
                )
        if not self.strict:
            return incompatible
        if heuristics:  # a pretrained backbone: the rest of the model stays initialised as built
            missing, unexpected = [], []
        else:
            unexpected = list(incompatible.unexpected_keys)
        if missing or unexpected or shapes:
            raise CheckpointMismatchError(describe_mismatch(name, missing, unexpected, shapes))
        return incompatible


def _suffix_matches(model_keys: Iterable[str], ckpt_keys: Iterable[str]) -> Dict[str, str]:
    """Model key -> the checkpoint key d2's ``align_and_update_state_dicts`` pairs it with.

    That is the longest checkpoint key equal to the model key or a dotted suffix of it. d2 drops a
    pair whose shapes differ with only a log line, leaving the model key silently "missing"; this
    redoes the matching so such pairs can be reported.
    """
    ckpt_keys = list(ckpt_keys)
    pairs = {}
    for key in model_keys:
        candidates = [c for c in ckpt_keys if key == c or key.endswith("." + c)]
        if candidates:
            pairs[key] = max(candidates, key=len)
    return pairs
