"""detectron2's ``COCOEvaluator`` with the same numbers from a compiled COCOeval.

The masks of an image are RLE-encoded a group at a time (hotcoco's encoder, pycocotools'
strings), each transposed into COCO's column order only between its first and last row; an
image's results are kept as a few arrays until ``evaluate``; and COCOeval is hotcoco's (Rust,
pycocotools-compatible: the same ``stats`` and ``eval["precision"]`` arrays; chosen over
faster-coco-eval, measured in docs/performance.md). Detectron2 turns its arrays into AP, AP50,
..., AP-<class> as before. The output folder gets ``coco_instances_results.json`` as from
detectron2, but not ``instances_predictions.pth`` (a pickle of the same results, per image)
unless asked for.
"""
import contextlib
import copy
import gc
import itertools
import json
import os
from collections import OrderedDict
from typing import Dict, Iterator, List, Tuple

import cv2
import numpy as np
import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.structures import BoxMode, Instances
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["FastCOCOEvaluator", "compact_results", "encode_masks", "expand_results", "instances_to_coco_results",
           "results_json", "rle_counts"]


# masks transposed and encoded together: a group's column-major copies stay in the cache
_ENCODE_GROUP = 8


def _row_bands(masks: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 masks -> per mask, the first and one past the last row holding a pixel
    (both 0 for an empty mask): one pass over the masks, contiguous."""
    words = masks.view(torch.int32) if masks.shape[2] % 4 == 0 else masks  # 4 pixels a word: faster
    rows = words.amax(2).numpy() != 0  # (N, H)
    top = rows.argmax(1)
    bottom = np.where(rows.any(1), rows.shape[1] - rows[:, ::-1].argmax(1), 0)
    return top, bottom


def encode_masks(masks: torch.Tensor) -> List[Dict]:
    """(N, H, W) binary masks -> N COCO RLEs ({"size": [H, W], "counts" str}), pycocotools'
    encoding (the same strings); see :func:`rle_counts`."""
    size = list(masks.shape[1:])
    return [{"size": list(size), "counts": counts} for counts in rle_counts(masks)]


def rle_counts(masks: torch.Tensor) -> List[str]:
    """(N, H, W) binary masks -> their N compressed COCO RLE strings (pycocotools' "counts"), by
    hotcoco's encoder, a group of masks per call.

    COCO's RLE runs down the columns; only the rows between a mask's first and last pixel are
    transposed into that order (OpenCV's transpose, several times torch's for bytes), into a
    small zeroed buffer that stays in the cache, instead of copying every mask whole.
    """
    import hotcoco.mask

    n, h, w = masks.shape
    if n == 0:
        return []
    masks = masks.contiguous()
    masks = masks.view(torch.uint8) if masks.dtype == torch.bool else masks.to(torch.uint8)
    bands = list(zip(*(b.tolist() for b in _row_bands(masks))))  # (top, bottom) per mask
    data = masks.numpy()
    group = np.zeros((min(n, _ENCODE_GROUP), w, h), dtype=np.uint8)  # (W, H): column-major masks
    views = list(group)
    written = [(0, 0)] * len(group)
    counts: List[str] = []
    for start in range(0, n, len(group)):
        count = min(len(group), n - start)
        for slot in range(count):
            (top, bottom), (old_top, old_bottom), view = bands[start + slot], written[slot], views[slot]
            if old_bottom > old_top:
                view[:, old_top:old_bottom] = 0
            if bottom > top:
                cv2.transpose(data[start + slot, top:bottom], view[:, top:bottom])
            written[slot] = (top, bottom)
        # (count, W, H) contiguous is (H, W, count) in Fortran order, what pycocotools encodes
        counts.extend(rle["counts"].decode("utf-8") for rle in hotcoco.mask.encode(group[:count].transpose(2, 1, 0)))
    return counts


def compact_results(instances: Instances, image_id: int) -> Dict:
    """One image's predictions as a few arrays and the masks' RLE strings (what
    :func:`expand_results` turns into COCO result dicts): a handful of objects per image
    instead of four per instance for Python's garbage collector to walk again and again.

    Returns:
        {"image_id", "boxes": (N, 4) XYWH, "scores": (N,), "classes": (N,) contiguous ids,
        "size": the masks' (H, W), "counts": N RLE strings; both None without masks}.
    """
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    has_masks = instances.has("pred_masks") and len(instances) > 0
    return {"image_id": image_id, "boxes": boxes, "scores": instances.scores.numpy().copy(),
            "classes": instances.pred_classes.numpy().copy(),
            "size": tuple(instances.pred_masks.shape[1:]) if has_masks else None,
            "counts": rle_counts(instances.pred_masks) if has_masks else None}


def expand_results(compact: Dict, boxes: bool = True) -> List[Dict]:
    """What detectron2's ``instances_to_coco_json`` returns, from :func:`compact_results`
    (without "bbox" unless ``boxes``: what COCOeval's mask AP is given)."""
    image_id, counts, size = compact["image_id"], compact["counts"], compact["size"]
    results = []
    for k, (cls, box, score) in enumerate(zip(compact["classes"].tolist(), compact["boxes"].tolist(),
                                              compact["scores"].tolist())):
        result = {"image_id": image_id, "category_id": cls, "bbox": box, "score": score} if boxes else \
            {"image_id": image_id, "category_id": cls, "score": score}
        if counts is not None:
            result["segmentation"] = {"size": list(size), "counts": counts[k]}
        results.append(result)
    return results


def results_json(compacts: List[Dict]) -> str:
    """``json.dumps`` of the :func:`expand_results` of ``compacts`` (the same text: detectron2's
    ``coco_instances_results.json``), formatted from their arrays without building the dicts."""
    parts = []
    for compact in compacts:
        scores, boxes, counts = compact["scores"], compact["boxes"], compact["counts"]
        if counts is None or not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
            parts.extend(json.dumps(result) for result in expand_results(compact))  # NaN, no masks: rare
            continue
        head = f'{{"image_id": {json.dumps(compact["image_id"])}, "category_id": '
        tail = f', "segmentation": {{"size": {json.dumps(list(compact["size"]))}, "counts": "'
        # RLE characters are "0".."o": the backslash is the only one JSON escapes
        parts.extend(f'{head}{cls!r}, "bbox": [{x!r}, {y!r}, {w!r}, {h!r}], "score": {score!r}{tail}'
                     f'{rle.replace(chr(92), chr(92) * 2)}"}}}}'
                     for cls, (x, y, w, h), score, rle in zip(compact["classes"].tolist(), boxes.tolist(),
                                                              scores.tolist(), counts))
    return "[" + ", ".join(parts) + "]"


def instances_to_coco_results(instances: Instances, image_id: int) -> List[Dict]:
    """What detectron2's ``instances_to_coco_json`` returns for boxes, scores, classes and masks."""
    if len(instances) == 0:
        return []
    return expand_results(compact_results(instances, image_id))


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a large number of acyclic objects (result dicts) is
    built: each of its passes would walk every one of them again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class FastCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` for "bbox" / "segm" with hotcoco's COCOeval (keypoints: use detectron2's)."""

    _COMPILED_TASKS = {"bbox", "segm"}

    def __init__(self, dataset_name: str, tasks=("segm",), distributed: bool = True, output_dir=None, *,
                 write_predictions: bool = False, **kwargs):
        if any(t not in self._COMPILED_TASKS for t in tasks or ()):
            raise ValueError(f"FastCOCOEvaluator evaluates {sorted(self._COMPILED_TASKS)}, not {tasks}")
        super().__init__(dataset_name, tasks=tasks, distributed=distributed, output_dir=output_dir,
                         use_fast_impl=False, **kwargs)
        self._compiled_gt = None
        self._write_predictions = write_predictions

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for input, output in zip(inputs, outputs):
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                self._predictions.append(compact_results(instances, input["image_id"]))

    def evaluate(self, img_ids=None):
        """detectron2's ``evaluate``; ``instances_predictions.pth`` (its format) only with
        ``write_predictions``."""
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            self._logger.warning("[FastCOCOEvaluator] Did not receive valid predictions.")
            return {}
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            if self._write_predictions:
                with _cyclic_gc_paused(), PathManager.open(
                        os.path.join(self._output_dir, "instances_predictions.pth"), "wb") as f:
                    torch.save([{"image_id": p["image_id"], "instances": expand_results(p)} for p in predictions], f)
        self._results = OrderedDict()
        self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    def _ground_truth(self):
        """The annotations as a hotcoco COCO (loaded once, from the file detectron2 loaded)."""
        if self._compiled_gt is None:
            import hotcoco

            self._compiled_gt = hotcoco.COCO(PathManager.get_local_path(self._metadata.json_file))
        return self._compiled_gt

    def _evaluate_on_coco(self, coco_results: List[Dict], task: str, img_ids=None):
        """detectron2's ``_evaluate_predictions_on_coco`` with hotcoco's COCOeval, without its
        deep copy of every result (the caller leaves the boxes out of mask AP's, as there)."""
        import hotcoco

        max_dets = self._max_dets_per_image
        if max_dets is not None and max_dets[2] != 100:  # detectron2's own COCOeval subclass
            return _evaluate_predictions_on_coco(self._ground_truth(), coco_results, task,
                                                 img_ids=img_ids, max_dets_per_image=max_dets)
        coco_gt = self._ground_truth()
        coco_eval = hotcoco.COCOeval(coco_gt, coco_gt.loadRes(coco_results), task)
        coco_eval.params.maxDets = max_dets if max_dets is not None else [1, 10, 100]
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return coco_eval

    def _with_dataset_ids(self, compact: Dict, table: np.ndarray) -> Dict:
        """``compact`` with its contiguous class ids replaced by the dataset's category ids
        (``table[contiguous id]``, -1 where none)."""
        classes = compact["classes"]
        known = (classes >= 0) & (classes < len(table))
        known[known] = table[classes[known]] >= 0
        if not known.all():
            raise ValueError(f"a prediction has class {int(classes[~known][0])}, but dataset "
                             f"{self._metadata.name} has {int((table >= 0).sum())} thing classes")
        return {**compact, "classes": table[classes]}

    def _eval_predictions(self, predictions: List[Dict], img_ids=None) -> None:
        """Args: predictions: :func:`compact_results` of every image."""
        to_dataset_id = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        table = np.full(max(to_dataset_id, default=-1) + 1, -1, dtype=np.int64)
        table[list(to_dataset_id)] = list(to_dataset_id.values())
        predictions = [self._with_dataset_ids(p, table) for p in predictions]
        with _cyclic_gc_paused():
            if self._output_dir:
                with PathManager.open(os.path.join(self._output_dir, "coco_instances_results.json"), "w") as f:
                    f.write(results_json(predictions))
            if not self._do_evaluation:
                self._logger.info("Annotations are not available for evaluation.")
                return
            self._logger.info("Evaluating predictions with hotcoco's COCOeval ...")
            for task in sorted(self._tasks or {"segm"}):
                # mask AP without the boxes: COCO then takes each area from the mask (as detectron2)
                coco_results = list(itertools.chain(*(expand_results(p, boxes=task != "segm") for p in predictions)))
                coco_eval = self._evaluate_on_coco(coco_results, task, img_ids) if coco_results else None
                self._results[task] = self._derive_coco_results(
                    coco_eval, task, class_names=self._metadata.get("thing_classes"))
