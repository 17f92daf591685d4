"""Single-image inference with a trained MaskFormer, like detectron2's ``DefaultPredictor``.

:class:`MaskFormerPredictor`: the model in eval mode, weights loaded strictly
(:class:`~maskformer_d2.checkpoint.MaskFormerCheckpointer`),
``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, BGR input by default converted
to ``INPUT.FORMAT``; returns the model's output dict for the image. Drawing the output is
:mod:`maskformer_d2.visualization`; reading image files is :mod:`maskformer_d2.data.io`.
"""
import logging
from typing import Dict, Optional

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..checkpoint import MaskFormerCheckpointer
from ..config import resolve_device

__all__ = ["MaskFormerPredictor"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- predictor
class MaskFormerPredictor:
    """Single-image inference, like detectron2's ``DefaultPredictor``.

    Builds the model from ``cfg`` (eval mode), loads ``MODEL.WEIGHTS`` strictly, and for each
    image resizes the shorter side to ``INPUT.MIN_SIZE_TEST`` (longer side at most
    ``INPUT.MAX_SIZE_TEST``; no resizing when MIN_SIZE_TEST is 0). A ``MODEL.DEVICE`` of cuda on a
    machine without CUDA falls back to the CPU with a warning.

    Args:
        cfg: a maskformer_d2 config.
        input_format: channel order of the arrays passed to ``__call__`` ("BGR" as cv2 reads).
        exported: an exported network (``model.onnx``: ONNX Runtime; ``model.ts``: TorchScript,
            which can run code from the file and so needs ``MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1``;
            see :mod:`maskformer_d2.deploy`) to run instead of the PyTorch one; ``MODEL.WEIGHTS``
            is then not read. Pre- and post-processing are the same.
    """

    def __init__(self, cfg: CfgNode, input_format: str = "BGR", exported: Optional[str] = None):
        self.cfg = resolve_device(cfg).clone()
        self.cfg.freeze()
        if input_format not in ("BGR", "RGB") or self.cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise ValueError(
                f"MaskFormerPredictor: input format {input_format!r} / INPUT.FORMAT {self.cfg.INPUT.FORMAT!r}; "
                "both must be 'BGR' or 'RGB'"
            )
        self.input_format = input_format
        self.model = build_model(self.cfg)
        self.model.eval()
        if exported:
            from ..deploy import attach_runtime
            attach_runtime(self.model, exported)
        elif self.cfg.MODEL.WEIGHTS:
            MaskFormerCheckpointer(self.model).load(self.cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the model has random weights")
        size = self.cfg.INPUT.MIN_SIZE_TEST
        self.aug = T.ResizeShortestEdge([size, size], self.cfg.INPUT.MAX_SIZE_TEST) if size > 0 else None

    def __call__(self, image: np.ndarray) -> Dict:
        """
        Args:
            image: (H, W, 3) uint8 in ``input_format`` order.

        Returns:
            the model's output for the image, at H x W: any of "sem_seg" (K, H, W) scores,
            "panoptic_seg" ((H, W) int32 segment ids, segments_info), "instances" (Instances).
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MaskFormerPredictor takes (H, W, 3) images, got shape {image.shape}")
        if self.input_format != self.cfg.INPUT.FORMAT:
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image) if self.aug is not None else image
        tensor = torch.as_tensor(np.ascontiguousarray(resized).astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]
