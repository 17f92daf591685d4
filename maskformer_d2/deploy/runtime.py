"""Running an exported network (ONNX Runtime or OpenVINO, or TorchScript) inside a MaskFormer model.

:func:`attach_runtime` makes ``model`` (built from the same config, in eval mode) send its
normalised, padded images to the exported file instead of its own backbone and head; the
model's resizing, padding and semantic / panoptic / instance post-processing are unchanged, so
the predictor, the demo and the evaluators work as they do in PyTorch.

An exported file may come from anyone, so loading one runs no code from it unless the user says
so: an ONNX graph is data (its external-data files are checked to lie in the model's folder,
:func:`check_external_data`, before an engine reads them), but a TorchScript file is a program
(its unpickler and TorchScript code run on load), so it is loaded only with the same opt-in as a
code-carrying checkpoint: ``--allow-unsafe-pickle`` / ``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``.
"""
import json
import os
import stat
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint.safe_load import UNSAFE_PICKLE_ENV, UNSAFE_PICKLE_FLAG, unsafe_pickle_allowed
from ..errors import ExportError, first_line
from .export import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES

__all__ = ["OnnxRuntimeNetwork", "OpenVinoNetwork", "TorchScriptNetwork", "attach_runtime",
           "load_runtime", "check_external_data", "ONNX_ENGINES"]


def _check_file(path: str, kind: str) -> None:
    """One line unless ``path`` is a regular file (a FIFO would block the engine's read)."""
    if not os.path.exists(path):
        raise ExportError(f"{path}: no such {kind} file")
    if not os.path.isfile(path):
        raise ExportError(f"{path}: not a regular file, so not a {kind} model")


def _all_tensors(model) -> Iterator:
    """Every TensorProto of an ONNX ModelProto: initializers, sparse initializers and tensor
    attributes of the nodes, in the main graph, its subgraphs (If / Loop / Scan bodies) and the
    model's functions."""
    graphs, nodes = [model.graph], [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attr in nodes.pop().attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            graphs.extend(([attr.g] if attr.HasField("g") else []) + list(attr.graphs))


def _check_external_tensor(path: str, folder: str, tensor) -> None:
    """One line unless ``tensor``'s external data is a byte range of a regular file in ``folder``."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    where = f"{path}: tensor {tensor.name!r}"
    location = info.get("location", "")
    if not location or "\0" in location:
        raise ExportError(f"{where} is stored externally but names no usable file ('location' "
                          f"{location!r})")
    target = os.path.realpath(os.path.join(folder, location))  # symlinks resolved
    if os.path.isabs(location) or os.path.commonpath([target, folder]) != folder:
        raise ExportError(f"{where} reads its data from {location!r}, outside the model's folder; "
                          "external data must lie next to the .onnx file")
    try:
        st = os.stat(target)
    except OSError:
        raise ExportError(f"{where} reads its data from {location!r}, which is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise ExportError(f"{where} reads its data from {location!r}, which is not a regular file")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise ExportError(f"{where}: external data offset/length {info.get('offset')!r}/"
                          f"{info.get('length')!r} are not numbers") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise ExportError(f"{where} reads bytes {offset}..{offset + length} of {location!r}, "
                          f"which has {st.st_size} bytes")


def check_external_data(path: str, model) -> None:
    """Check the external-data references of ONNX ``model`` (read from ``path`` with
    ``load_external_data=False``) before an engine follows them: each one must name a regular
    file inside the model's folder (after resolving symlinks), and its offset and length must lie
    within that file. Otherwise one :class:`ExportError` line says which tensor and what is wrong.
    """
    from onnx import TensorProto

    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for tensor in _all_tensors(model):
        if tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL:
            _check_external_tensor(path, folder, tensor)


def _read_onnx(path: str):
    """The ModelProto of ``path`` without its external data, which is checked (one line if not
    readable, or if its external data is not where it may be)."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ExportError(f"{path}: not a readable ONNX model ({first_line(e) or type(e).__name__})") from None
    check_external_data(path, model)
    return model


def _check_size(path: str, metadata: Dict, images: Tensor) -> None:
    fixed = metadata.get("fixed_size")
    if fixed and list(images.shape[-2:]) != list(fixed):
        raise ExportError(
            f"{path}: exported for {fixed[0]}x{fixed[1]} inputs only (a module of the model fixes "
            f"its sizes at export: EXPORT_FIXED_SIZE), got {images.shape[-2]}x{images.shape[-1]}; "
            f"export at your padded input size (export_model.py --height/--width)")


def _parse_metadata(path: str, text: str) -> Dict:
    """The export's metadata (a JSON object, "" when absent), or one line saying it is not one."""
    try:
        metadata = json.loads(text or "{}")
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise ExportError(f"{path}: its {METADATA_KEY!r} metadata is not a JSON object; "
                          f"export the model again (tools/deploy/export_model.py)")
    return metadata


def _check_metadata(path: str, metadata: Dict, model: nn.Module) -> None:
    """One line if ``path`` was exported for another number of classes or size divisibility."""
    expected = {"num_classes": getattr(model.sem_seg_head, "num_classes", None),
                "size_divisibility": int(model.size_divisibility)}
    for key, value in expected.items():
        if key in metadata and value is not None and metadata[key] != value:
            raise ExportError(
                f"{path}: exported with {key} {metadata[key]}, but the config gives {value}; "
                f"export it again from this config (tools/deploy/export_model.py)")


def _port_name(port, name: str) -> str:
    """``name`` when it is one of an OpenVINO port's tensor names, else one of them: OpenVINO
    merges an input with a first no-op op (a cast to float32, as in the DINOv3 EoMT export) and
    may give either name first."""
    return name if name in port.get_names() else port.get_any_name()


class _OnnxNetwork:
    """What the engines that run an exported ``model.onnx`` share: the file and name checks, the
    metadata, and :meth:`MaskFormer.network`'s contract around the engine's own ``_run``."""

    def __init__(self, path: str):
        _check_file(path, "ONNX")
        self.path = path
        # read and checked before an engine reads the file and its external data; the metadata
        # comes from here for every engine (OpenVINO does not expose it)
        proto = _read_onnx(path)
        props = {p.key: p.value for p in proto.metadata_props}
        self.metadata = _parse_metadata(path, props.get(METADATA_KEY, ""))

    def _check_names(self, inputs: List[str], outputs: List[str]) -> None:
        if inputs != [INPUT_NAME] or outputs[:2] != list(OUTPUT_NAMES):
            raise ExportError(f"{self.path}: not a maskformer_d2 export (inputs/outputs {inputs} "
                              f"-> {outputs})")

    def _run(self, array: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, images: Tensor) -> Dict[str, Tensor]:
        _check_size(self.path, self.metadata, images)
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        logits, masks = self._run(array)
        return {"pred_logits": torch.from_numpy(np.asarray(logits)).to(images.device),
                "pred_masks": torch.from_numpy(np.asarray(masks)).to(images.device)}


class OnnxRuntimeNetwork(_OnnxNetwork):
    """An ONNX file run by ONNX Runtime on the CPU, with :meth:`MaskFormer.network`'s contract.

    Args:
        path: a ``model.onnx`` written by :func:`~maskformer_d2.deploy.export.export_onnx`.
        threads: intra-op threads (0: ONNX Runtime's default).
    """

    def __init__(self, path: str, threads: int = 0):
        super().__init__(path)
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
        self._check_names([i.name for i in self.session.get_inputs()],
                          [o.name for o in self.session.get_outputs()])

    def _run(self, array: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        logits, masks = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return logits, masks


class OpenVinoNetwork(_OnnxNetwork):
    """An ONNX file run by OpenVINO on the CPU, with :meth:`MaskFormer.network`'s contract.

    On CPUs with bf16 matrix units (e.g. Intel AMX) OpenVINO's default precision is bf16, which
    changes logits by up to ~0.1; ``precision="f32"`` (the default here) keeps the exported
    network's fp32 results.

    Args:
        path: a ``model.onnx`` written by :func:`~maskformer_d2.deploy.export.export_onnx`.
        threads: inference threads (0: OpenVINO's default).
        precision: "f32" or "bf16" (OpenVINO's ``INFERENCE_PRECISION_HINT``).
    """

    def __init__(self, path: str, threads: int = 0, precision: str = "f32"):
        super().__init__(path)
        if precision not in ("f32", "bf16"):
            raise ExportError(f"OpenVINO precision {precision!r}: use 'f32' or 'bf16'")
        try:
            import openvino
        except ImportError:
            raise ExportError("the OpenVINO engine needs the openvino package (the set-up "
                              "installs it: make setup)") from None
        try:
            core = openvino.Core()
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        except Exception as e:
            raise ExportError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
        self._check_names([_port_name(i, INPUT_NAME) for i in self.compiled.inputs],
                          [o.get_any_name() for o in self.compiled.outputs])

    def _run(self, array: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        result = self.compiled([array])
        return result[self.compiled.outputs[0]], result[self.compiled.outputs[1]]


#: what runs an .onnx file: engine name -> factory(path, threads)
ONNX_ENGINES = {
    "onnxruntime": OnnxRuntimeNetwork,
    "openvino": OpenVinoNetwork,
    "openvino-bf16": lambda path, threads: OpenVinoNetwork(path, threads, precision="bf16"),
}


class TorchScriptNetwork:
    """A traced ``model.ts`` (:func:`~maskformer_d2.deploy.export.export_torchscript`).

    A TorchScript file is a program: loading it can run code from the file, so it is loaded
    only with the explicit opt-in of code-carrying checkpoints (``--allow-unsafe-pickle`` /
    ``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``); ONNX exports need none.
    """

    def __init__(self, path: str):
        _check_file(path, "TorchScript")
        if not unsafe_pickle_allowed():
            raise ExportError(
                f"{path}: refused to load TorchScript (a TorchScript file is a program and loading "
                f"it can run code from the file); if you trust this file, pass {UNSAFE_PICKLE_FLAG} "
                f"(or set {UNSAFE_PICKLE_ENV}=1), or export to ONNX instead")
        extra = {METADATA_KEY: ""}
        try:
            self.module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise ExportError(f"{path}: not a readable TorchScript file ({first_line(e)})") from None
        self.metadata = _parse_metadata(path, extra[METADATA_KEY])
        self.path = path

    def __call__(self, images: Tensor) -> Dict[str, Tensor]:
        _check_size(self.path, self.metadata, images)
        with torch.no_grad():
            logits, masks = self.module(images.contiguous())
        return {"pred_logits": logits, "pred_masks": masks}


def load_runtime(path: str, threads: int = 0, engine: str = "onnxruntime"):
    """The runtime of an exported file, chosen by its extension (.onnx or .ts); ``engine`` runs
    .onnx files (see :data:`ONNX_ENGINES`)."""
    if path.endswith(".onnx"):
        if engine not in ONNX_ENGINES:
            raise ExportError(f"ONNX engine {engine!r}: choose from {sorted(ONNX_ENGINES)}")
        return ONNX_ENGINES[engine](path, threads)
    if path.endswith(".ts") or path.endswith(".pt"):
        return TorchScriptNetwork(path)
    raise ExportError(f"{path}: an exported model ends in .onnx (ONNX Runtime) or .ts (TorchScript)")


def attach_runtime(model: nn.Module, path: str, threads: int = 0,
                   engine: str = "onnxruntime") -> nn.Module:
    """``model`` (eval mode) running its network from the exported file ``path`` (with
    ``engine`` for .onnx files); checks that the file was exported for the same number of
    classes and size divisibility."""
    runtime = load_runtime(path, threads, engine)
    _check_metadata(path, runtime.metadata, model)
    model.runtime = runtime
    return model.eval()
