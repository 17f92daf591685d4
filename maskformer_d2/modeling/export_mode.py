"""Whether the model is being traced for export: the one question modelling code asks about
deployment (exporting itself lives in :mod:`maskformer_d2.deploy`, which modelling never imports)."""
import torch

__all__ = ["is_exporting"]


def is_exporting() -> bool:
    """Whether the model is being traced (``torch.jit.trace``, ``torch.onnx.export``): modules
    that compute something differently for an exported graph ask this."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
