"""Running an exported network (ONNX Runtime or OpenVINO, or TorchScript) inside a MaskFormer model.

:func:`attach_runtime` makes ``model`` (built from the same config, in eval mode) send its
normalised, padded images to the exported file instead of its own backbone and head; the
model's resizing, padding and semantic / panoptic / instance post-processing are unchanged, so
the predictor, the demo and the evaluators work as they do in PyTorch.
"""
import json
import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError, first_line
from .export import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES

__all__ = ["OnnxRuntimeNetwork", "OpenVinoNetwork", "TorchScriptNetwork", "attach_runtime",
           "load_runtime", "ONNX_ENGINES"]


def _check_size(path: str, metadata: Dict, images: Tensor) -> None:
    fixed = metadata.get("fixed_size")
    if fixed and list(images.shape[-2:]) != list(fixed):
        raise ExportError(
            f"{path}: exported for {fixed[0]}x{fixed[1]} inputs only (a module of the model fixes "
            f"its sizes at export: EXPORT_FIXED_SIZE), got {images.shape[-2]}x{images.shape[-1]}; "
            f"export at your padded input size (export_model.py --height/--width)")


def _check_metadata(path: str, metadata: Dict, model: nn.Module) -> None:
    """One line if ``path`` was exported for another number of classes or size divisibility."""
    expected = {"num_classes": getattr(model.sem_seg_head, "num_classes", None),
                "size_divisibility": int(model.size_divisibility)}
    for key, value in expected.items():
        if key in metadata and value is not None and metadata[key] != value:
            raise ExportError(
                f"{path}: exported with {key} {metadata[key]}, but the config gives {value}; "
                f"export it again from this config (tools/deploy/export_model.py)")


class _OnnxNetwork:
    """What the engines that run an exported ``model.onnx`` share: the file and name checks, the
    metadata, and :meth:`MaskFormer.network`'s contract around the engine's own ``_run``."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise ExportError(f"{path}: no such ONNX file")
        self.path = path
        self.metadata: Dict = {}

    def _check_names(self, inputs: List[str], outputs: List[str]) -> None:
        if inputs != [INPUT_NAME] or outputs[:2] != list(OUTPUT_NAMES):
            raise ExportError(f"{self.path}: not a maskformer_d2 export (inputs/outputs {inputs} "
                              f"-> {outputs})")

    def _read_metadata(self, props: Dict[str, str]) -> None:
        self.metadata = json.loads(props.get(METADATA_KEY, "{}"))

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
        self._read_metadata(self.session.get_modelmeta().custom_metadata_map)

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
        import onnx
        try:
            # OpenVINO does not expose an ONNX file's metadata; onnx reads it
            proto = onnx.load(path, load_external_data=False)
            core = openvino.Core()
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        except Exception as e:
            raise ExportError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
        self._check_names([i.get_any_name() for i in self.compiled.inputs],
                          [o.get_any_name() for o in self.compiled.outputs])
        self._read_metadata({p.key: p.value for p in proto.metadata_props})

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
    """A traced ``model.ts`` (:func:`~maskformer_d2.deploy.export.export_torchscript`)."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise ExportError(f"{path}: no such TorchScript file")
        extra = {METADATA_KEY: ""}
        try:
            self.module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise ExportError(f"{path}: not a readable TorchScript file ({first_line(e)})") from None
        self.metadata = json.loads(extra[METADATA_KEY] or "{}")
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
