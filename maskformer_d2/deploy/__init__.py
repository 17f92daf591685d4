"""Deployment: export a MaskFormer network to ONNX / TorchScript and run it with ONNX Runtime
(or OpenVINO)."""
from .export import ExportableNetwork, export_onnx, export_torchscript
from .runtime import (
    OnnxRuntimeNetwork,
    OpenVinoNetwork,
    TorchScriptNetwork,
    attach_runtime,
    load_runtime,
)

__all__ = ["ExportableNetwork", "export_onnx", "export_torchscript", "OnnxRuntimeNetwork",
           "OpenVinoNetwork", "TorchScriptNetwork", "attach_runtime", "load_runtime"]
