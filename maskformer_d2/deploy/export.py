"""Exporting the network of a MaskFormer model to ONNX or TorchScript.

What is exported is :meth:`MaskFormer.network`: (B, 3, H, W) normalised images, zero-padded to a
multiple of the size divisibility -> ``pred_logits`` (B, Q, K+1) class logits and ``pred_masks``
(B, Q, H/4, W/4) mask logits of the final decoder layer. Resizing, normalising, padding and the
semantic / panoptic / instance post-processing stay in Python (:mod:`.runtime`), so every task
and rendering works unchanged on an exported model. Height and width are dynamic (any multiple of
the size divisibility) for every built-in model, MaskFormer and Mask2Former, ResNet and Swin:
sizes computed in the network (Swin's shifted-window masks, the deformable attention's level
shapes) are computed with traced tensor arithmetic. A module of your own whose traced graph
fits only the export size says so with ``EXPORT_FIXED_SIZE = True``; the file then records that
size and the runtime refuses others.

Both exporters write their file with :func:`~maskformer_d2.checkpoint.atomic.write_atomically`: a failed
or interrupted export leaves the previous file (or none), never half a model.
"""
import contextlib
import io
import json
import os
import warnings
from typing import Dict, Iterator, Tuple

import torch
from torch import Tensor, nn

from ..checkpoint.atomic import write_atomically
from ..errors import ExportError, first_line
from ..modeling.export_mode import is_exporting

__all__ = ["ExportableNetwork", "export_onnx", "export_torchscript", "is_exporting", "METADATA_KEY",
           "INPUT_NAME", "OUTPUT_NAMES", "ONNX_OPSET"]

INPUT_NAME = "images"
OUTPUT_NAMES = ("pred_logits", "pred_masks")
METADATA_KEY = "maskformer_d2"
ONNX_OPSET = 18


class ExportableNetwork(nn.Module):
    """``model.network`` with tensor outputs only (final decoder layer), in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "network") or not hasattr(model, "size_divisibility"):
            raise ExportError(
                f"{type(model).__name__} cannot be exported: only MaskFormer models "
                "(MODEL.META_ARCHITECTURE: MaskFormer) have an exportable network")
        self.model = model
        # in eval mode itself: the exporters put a module back into the mode it had, and a
        # wrapper left in training mode would switch the caller's model to training
        self.eval()

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        outputs = self.model.network(images)
        missing = [k for k in OUTPUT_NAMES if k not in outputs]
        if missing:
            raise ExportError(
                f"{type(self.model.sem_seg_head).__name__} returns no {'/'.join(missing)}: only "
                "mask-classification heads can be exported")
        return outputs["pred_logits"], outputs["pred_masks"]

    def fixed_size(self) -> bool:
        """Whether the exported graph only works at the example's size: a module whose forward
        turns the input size into Python constants (which tracing freezes) says so with an
        attribute ``EXPORT_FIXED_SIZE = True`` (none of the built-in ones does)."""
        return any(getattr(m, "EXPORT_FIXED_SIZE", False) for m in self.model.modules())

    def metadata(self, example: Tensor) -> Dict[str, str]:
        """What a runtime needs to check a file against a config (and an input against it)."""
        m = self.model
        return {METADATA_KEY: json.dumps({
            "fixed_size": list(example.shape[-2:]) if self.fixed_size() else None,
            "size_divisibility": int(m.size_divisibility),
            "num_classes": int(m.sem_seg_head.num_classes) if hasattr(m.sem_seg_head, "num_classes") else None,
            "pixel_mean": m.pixel_mean.flatten().tolist(),
            "pixel_std": m.pixel_std.flatten().tolist(),
        })}


def example_input(model: nn.Module, height: int = 256, width: int = 320) -> Tensor:
    """A (1, 3, H, W) input whose sides are multiples of the size divisibility, or of the size
    every input is padded to where the model has one (``model.fixed_input_size``, EoMT's
    ``MODEL.EOMT.IMG_SIZE``; ``height`` and ``width`` are ignored then)."""
    fixed = getattr(model, "fixed_input_size", None)
    if fixed is not None:
        h, w = (int(s) for s in fixed)
        return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    d = max(int(model.size_divisibility), 32)
    h, w = -(-height // d) * d, -(-width // d) * d
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def _tracing(net: ExportableNetwork) -> Iterator[None]:
    """No gradients; and for a network that declared its graph fixed to the example's size
    (``EXPORT_FIXED_SIZE``), no tracer warnings, which would only repeat that."""
    with torch.no_grad(), warnings.catch_warnings():
        if net.fixed_size():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _failed(what: str, e: Exception) -> ExportError:
    return ExportError(f"{what} export failed ({type(e).__name__}): {first_line(e)}")


def export_onnx(model: nn.Module, path: str, example: Tensor = None) -> None:
    """Write ``model``'s network to ``path`` as ONNX (opset 18, dynamic batch/height/width)."""
    net = ExportableNetwork(model)
    example = example_input(model) if example is None else example
    buffer = io.BytesIO()  # the graph is completed in memory (metadata added) before it is written
    try:
        with _tracing(net):
            net(example)  # a head without mask classification fails here, with its own message
            torch.onnx.export(
                net, (example,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              "pred_logits": {0: "batch"},
                              "pred_masks": {0: "batch", 2: "mask_height", 3: "mask_width"}},
                opset_version=ONNX_OPSET, dynamo=False,
            )
    except ExportError:
        raise
    except Exception as e:
        raise _failed("ONNX", e) from e
    import onnx
    proto = onnx.load_model_from_string(buffer.getvalue())
    del buffer
    for key, value in net.metadata(example).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: f.write(proto.SerializeToString()))


def export_torchscript(model: nn.Module, path: str, example: Tensor = None) -> None:
    """Write ``model``'s network to ``path`` as a traced TorchScript module."""
    net = ExportableNetwork(model)
    example = example_input(model) if example is None else example
    try:
        with _tracing(net):
            net(example)
            traced = torch.jit.trace(net, (example,), check_trace=False)
    except ExportError:
        raise
    except Exception as e:
        raise _failed("TorchScript", e) from e
    extra = {METADATA_KEY: net.metadata(example)[METADATA_KEY]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: torch.jit.save(traced, f, _extra_files=extra))
