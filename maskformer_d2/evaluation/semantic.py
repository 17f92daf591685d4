"""detectron2's ``SemSegEvaluator`` with the same numbers, less work per image.

The confusion matrices (plain and boundary) and every metric are detectron2's; what changes:
the per-pixel argmax runs over the innermost dimension (:func:`argmax_over_first_dim`), the
matrices are counted by OpenCV's histograms over 8-bit labels (:mod:`.histograms`), grayscale
label PNGs are decoded by OpenCV, a boundary is one erosion, and the COCO-stuff JSON of the
predictions (one RLE per class and image, which costs more than the rest of the evaluation) is
written only when asked for.
"""
import os
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
from detectron2.evaluation import SemSegEvaluator
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array
from detectron2.utils.file_io import PathManager

from ..inference.postprocessing import argmax_over_first_dim
from .histograms import pair_counts, value_counts

__all__ = ["FastSemSegEvaluator"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_gray_png(path: str) -> Optional[np.ndarray]:
    """An 8- or 16-bit grayscale PNG's values by OpenCV (what PIL gives detectron2's loader, in
    less time); None for any other file (palette, colour, 1-bit, ...: left to PIL)."""
    with PathManager.open(path, "rb") as f:
        data = f.read()
    # signature, IHDR: length, type, width, height, bit depth, colour type
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or data[24:26] not in (b"\x08\x00", b"\x10\x00"):
        return None
    labels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return labels if labels is not None and labels.ndim == 2 else None


class FastSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC, per-class and boundary IoU) without the
    per-image prediction JSON unless ``write_predictions``."""

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir=None, *,
                 write_predictions: bool = False):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._write_predictions = write_predictions
        self._relabel: Optional[np.ndarray] = None

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """Args: dataset dicts ("file_name") and model outputs ("sem_seg": (K, H, W) scores)."""
        size = self._num_classes + 1
        for input, output in zip(inputs, outputs):
            pred = argmax_over_first_dim(output["sem_seg"]).to(self._cpu_device).numpy()
            if size <= 256:
                pred = pred.astype(np.uint8)
            gt = self._ground_truth(input["file_name"])
            self._conf_matrix += pair_counts(pred, gt, size, size)
            if self._compute_boundary_iou:
                b_gt = self._mask_to_boundary(gt.astype(np.uint8, copy=False))
                b_pred = self._mask_to_boundary(pred.astype(np.uint8, copy=False))
                # uint8 arithmetic as detectron2's (it wraps around from 16 classes on: the same
                # boundary numbers as the stock evaluator, not corrected ones)
                self._b_conf_matrix += value_counts(size * b_pred + b_gt, size * size).reshape(size, size)
            if self._write_predictions:
                self._predictions.extend(self.encode_json_sem_seg(pred.astype(np.int64), input["file_name"]))

    def _mask_to_boundary(self, mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
        """detectron2's boundary of an (H, W) uint8 label map (``mask`` minus its erosion by
        ``d = round(dilation_ratio * diagonal)`` 3x3 steps, zeros beyond the edge), by one
        (2d+1)-square erosion without the padded copy: the same result."""
        h, w = mask.shape
        dilation = max(1, int(round(dilation_ratio * np.sqrt(h ** 2 + w ** 2))))
        square = np.ones((2 * dilation + 1, 2 * dilation + 1), dtype=np.uint8)
        return mask - cv2.erode(mask, square, borderType=cv2.BORDER_CONSTANT, borderValue=0)

    def _ground_truth(self, file_name: str) -> np.ndarray:
        """(H, W) ground-truth classes of an image, the ignore label replaced by K (as detectron2):
        8-bit label images through a 256-entry table, kept 8-bit; others as int64.

        Raises:
            ValueError: a label that is neither a class (0..K-1) nor the ignore label.
        """
        gt_file = self.input_file_to_gt_file[file_name]
        gt = _read_gray_png(gt_file) if self.sem_seg_loading_fn is load_image_into_numpy_array else None
        if gt is None:
            gt = np.asarray(self.sem_seg_loading_fn(gt_file, dtype=None))
        if gt.dtype == np.uint8 and self._num_classes < 256:
            if self._relabel is None:
                self._relabel = np.arange(256, dtype=np.uint8)
                if 0 <= self._ignore_label < 256:
                    self._relabel[self._ignore_label] = self._num_classes
            gt = cv2.LUT(gt, self._relabel)
        else:
            gt = gt.astype(np.int64)
            gt[gt == self._ignore_label] = self._num_classes
        low, high = (int(gt.min()), int(gt.max())) if gt.size else (0, 0)
        if low < 0 or high > self._num_classes:
            bad = high if high > self._num_classes else low
            raise ValueError(f"{gt_file}: label {bad} is neither a class (0..{self._num_classes - 1}) "
                             f"nor the ignore label {self._ignore_label}")
        return gt

    def evaluate(self):
        if self._write_predictions:
            return super().evaluate()
        output_dir, self._output_dir = self._output_dir, None  # no (empty) prediction JSON
        try:
            results = super().evaluate()
        finally:
            self._output_dir = output_dir
        if results is not None and output_dir:
            PathManager.mkdirs(output_dir)
            with PathManager.open(os.path.join(output_dir, "sem_seg_evaluation.pth"), "wb") as f:
                torch.save(results["sem_seg"], f)
        return results
