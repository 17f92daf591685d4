"""detectron2's ``COCOEvaluator`` with the same numbers from a compiled COCOeval.

The masks of an image are RLE-encoded in one call (hotcoco's encoder, pycocotools' strings)
instead of one call per instance, and COCOeval is hotcoco's (Rust, pycocotools-compatible: the
same ``stats`` and ``eval["precision"]`` arrays; chosen over faster-coco-eval, measured in
docs/performance.md). Detectron2 turns its arrays into AP, AP50, ..., AP-<class> as before.
The output folder gets ``coco_instances_results.json`` as from detectron2, but not
``instances_predictions.pth`` (a pickle of the same results, per image) unless asked for.
"""
import copy
import itertools
import json
import os
from collections import OrderedDict
from typing import Dict, List

import cv2
import numpy as np
import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.structures import BoxMode, Instances
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["FastCOCOEvaluator", "encode_masks", "instances_to_coco_results"]


def encode_masks(masks: torch.Tensor) -> List[Dict]:
    """(N, H, W) binary masks -> N COCO RLEs ({"size", "counts" str}), pycocotools' encoding
    (the same strings) by hotcoco's encoder in one call."""
    import hotcoco.mask

    if masks.shape[0] == 0:
        return []
    masks = masks.numpy().view(np.uint8) if masks.dtype == torch.bool else masks.to(torch.uint8).numpy()
    transposed = np.empty((masks.shape[0], masks.shape[2], masks.shape[1]), dtype=np.uint8)
    for mask, out in zip(masks, transposed):  # OpenCV's transpose: several times torch's for bytes
        cv2.transpose(mask, out)
    # (N, W, H) contiguous is (H, W, N) in Fortran order, what pycocotools encodes
    rles = hotcoco.mask.encode(transposed.transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


def instances_to_coco_results(instances: Instances, image_id: int) -> List[Dict]:
    """What detectron2's ``instances_to_coco_json`` returns for boxes, scores, classes and masks."""
    if len(instances) == 0:
        return []
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores, classes = instances.scores.tolist(), instances.pred_classes.tolist()
    rles = encode_masks(instances.pred_masks) if instances.has("pred_masks") else None
    results = []
    for k in range(len(instances)):
        result = {"image_id": image_id, "category_id": classes[k], "bbox": boxes[k], "score": scores[k]}
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


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
                self._predictions.append(
                    {"image_id": input["image_id"],
                     "instances": instances_to_coco_results(instances, input["image_id"])})

    def evaluate(self, img_ids=None):
        """detectron2's ``evaluate``; ``instances_predictions.pth`` only with ``write_predictions``."""
        if self._write_predictions:
            return super().evaluate(img_ids)
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
        deep copy of every result (mask AP leaves the boxes out, as there)."""
        import hotcoco

        max_dets = self._max_dets_per_image
        if max_dets is not None and max_dets[2] != 100:  # detectron2's own COCOeval subclass
            return _evaluate_predictions_on_coco(self._ground_truth(), coco_results, task,
                                                 img_ids=img_ids, max_dets_per_image=max_dets)
        if task == "segm":
            coco_results = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
        coco_gt = self._ground_truth()
        coco_eval = hotcoco.COCOeval(coco_gt, coco_gt.loadRes(coco_results), task)
        coco_eval.params.maxDets = max_dets if max_dets is not None else [1, 10, 100]
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return coco_eval

    def _eval_predictions(self, predictions: List[Dict], img_ids=None) -> None:

        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        to_dataset_id = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        for result in coco_results:
            if result["category_id"] not in to_dataset_id:
                raise ValueError(f"a prediction has class {result['category_id']}, but dataset "
                                 f"{self._metadata.name} has {len(to_dataset_id)} thing classes")
            result["category_id"] = to_dataset_id[result["category_id"]]
        if self._output_dir:
            with PathManager.open(os.path.join(self._output_dir, "coco_instances_results.json"), "w") as f:
                f.write(json.dumps(coco_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info("Evaluating predictions with hotcoco's COCOeval ...")
        for task in sorted(self._tasks or {"segm"}):
            coco_eval = None
            if coco_results:
                coco_eval = self._evaluate_on_coco(coco_results, task, img_ids)
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes"))
