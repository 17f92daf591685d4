"""Panoptic quality with per-class PQ, two ways with the same numbers.

* ``PanopticEvaluatorWithClasses``: detectron2's ``COCOPanopticEvaluator`` (PNG per prediction,
  panopticapi's ``pq_compute`` over files) plus the per-class PQ that panopticapi computes and
  detectron2 drops: results gain ``PQ-<class name>`` keys (as ``SemSegEvaluator`` reports
  ``IoU-<class>`` and ``COCOEvaluator`` ``AP-<class>``).
* ``InMemoryPanopticEvaluator``: panopticapi's matching rules applied to each prediction in
  memory as it arrives (:func:`accumulate_image`), no PNG written or re-read.
"""
import contextlib
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import detectron2.utils.comm as comm
import numpy as np
import panopticapi.evaluation
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.evaluation.panoptic_evaluation import _print_panoptic_results
from detectron2.utils.file_io import PathManager
from panopticapi.evaluation import VOID, PQStat

from .histograms import pair_counts

__all__ = ["PanopticEvaluatorWithClasses", "InMemoryPanopticEvaluator", "PQStats", "accumulate_image",
           "per_class_pq", "read_panoptic_png"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _capturing_pq_compute(sink: List[Dict]) -> Iterator[None]:
    """While active, every result of ``panopticapi.evaluation.pq_compute`` is appended to ``sink``
    (detectron2's evaluator imports the function when it evaluates, so it gets this one)."""
    original = panopticapi.evaluation.pq_compute

    def pq_compute(*args, **kwargs):
        result = original(*args, **kwargs)
        sink.append(result)
        return result

    panopticapi.evaluation.pq_compute = pq_compute
    try:
        yield
    finally:
        panopticapi.evaluation.pq_compute = original


def per_class_pq(pq_res: Dict, dataset_name: str) -> Dict[str, float]:
    """``{"PQ-<class name>": PQ in percent}`` from panopticapi's ``per_class`` results (keyed by
    the dataset's category ids; a class named twice keeps its id in the key)."""
    meta = MetadataCatalog.get(dataset_name)
    names: Dict[int, str] = {}
    for field in ("stuff", "thing"):
        classes = meta.get(f"{field}_classes", None) or []
        for dataset_id, contiguous in (meta.get(f"{field}_dataset_id_to_contiguous_id", None) or {}).items():
            if contiguous < len(classes):
                names.setdefault(int(dataset_id), classes[contiguous])
    out: Dict[str, float] = {}
    for category_id, numbers in sorted(pq_res.get("per_class", {}).items()):
        name = names.get(int(category_id), f"class {category_id}")
        key = f"PQ-{name}" if f"PQ-{name}" not in out else f"PQ-{name} ({category_id})"
        out[key] = 100 * numbers["pq"]
    return out


class PanopticEvaluatorWithClasses(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` whose results also hold ``PQ-<class>`` for every category."""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name, output_dir)
        self._dataset_name = dataset_name

    def evaluate(self):
        computed: List[Dict] = []
        with _capturing_pq_compute(computed):
            results = super().evaluate()
        if results is not None and computed:  # None in every process but the main one
            results["panoptic_seg"].update(per_class_pq(computed[-1], self._dataset_name))
        return results


class PQStats:
    """panopticapi's per-category counts (``PQStat``) as arrays over the dataset's categories:
    summed IoU of matched pairs, true positives, false positives, false negatives.

    Args:
        categories: the ground-truth JSON's "categories" (their order is the array order).
    """

    def __init__(self, categories: List[Dict]):
        self.category_ids = [int(c["id"]) for c in categories]
        self.isthing = np.array([bool(c.get("isthing", 0)) for c in categories])
        self.index = {c: i for i, c in enumerate(self.category_ids)}
        self.iou = np.zeros(len(categories), dtype=np.float64)
        self.tp, self.fp, self.fn = (np.zeros(len(categories), dtype=np.int64) for _ in range(3))
        self.images = 0

    def __iadd__(self, other: "PQStats") -> "PQStats":
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.images += other.images
        return self

    def average(self, isthing: Optional[bool]) -> Tuple[Dict[str, float], Dict[int, Dict[str, float]]]:
        """panopticapi's ``pq_average``: the mean PQ / SQ / RQ over the categories (of one kind)
        that have a match, a false positive or a false negative; and per category. Zeros where
        no category of the kind has any (panopticapi would divide by zero)."""
        stat = PQStat()
        for i, category_id in enumerate(self.category_ids):
            cat = stat[category_id]
            cat.iou, cat.tp, cat.fp, cat.fn = float(self.iou[i]), int(self.tp[i]), int(self.fp[i]), int(self.fn[i])
        categories = {c: {"isthing": int(t)} for c, t in zip(self.category_ids, self.isthing)}
        kind = np.ones(len(self.category_ids), dtype=bool) if isthing is None else self.isthing == isthing
        if not (self.tp + self.fp + self.fn)[kind].any():
            zeros = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            return {**zeros, "n": 0}, {c: dict(zeros) for c, k in zip(self.category_ids, kind) if k}
        return stat.pq_average(categories, isthing)

    def results(self) -> Dict:
        """What panopticapi's ``pq_compute`` returns: "All", "Things", "Stuff", "per_class"."""
        out: Dict = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            out[name], per_class = self.average(isthing)
            if isthing is None:
                out["per_class"] = per_class
        return out


def _pixel_index(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per pixel, the position of its id in ``values`` (distinct, >= 0), or len(values) when absent
    (uint8 for fewer than 255 values, else int64).

    A table indexed by a few low bits of the id or its remainder (the fewest that tell the values
    apart): a few passes over the pixels instead of a binary search per pixel.
    """
    modulus = _byte_modulus(values) if ids.dtype in (np.uint32, np.int32) else None
    if modulus is not None:
        return _pixel_index_8bit(ids, values, modulus)
    n = len(values)
    table_size = next((1 << bits for bits in range(max(n - 1, 1).bit_length(), 21)
                       if len(np.unique(values & ((1 << bits) - 1))) == n), None)
    if table_size is not None:
        slot_of_value, slots = values & (table_size - 1), ids & (table_size - 1)
    else:
        table_size = n
        while len(np.unique(values % table_size)) < n:
            table_size += 1
        slot_of_value, slots = values % table_size, ids % table_size
    slot_value = np.full(table_size, -1, dtype=np.int64)
    slot_index = np.full(table_size, n, dtype=np.int64)
    slot_value[slot_of_value] = values
    slot_index[slot_of_value] = np.arange(n)
    return np.where(slot_value[slots] == ids, slot_index[slots], n)


def _byte_modulus(values: np.ndarray) -> Optional[int]:
    """The smallest m <= 256 (a power of two if one works) leaving distinct remainders of the
    values, which are below 2**31; None if there is none or 255 values or more."""
    n = len(values)
    if not 0 < n < 255 or values.min() < 0 or values.max() >= (1 << 31):
        return None
    moduli = np.arange(n, 257)
    remainders = np.sort(values[None, :] % moduli[:, None], axis=1)
    distinct = moduli[~(remainders[:, 1:] == remainders[:, :-1]).any(1)]
    powers = distinct[(distinct & (distinct - 1)) == 0]
    return int(powers[0]) if len(powers) else int(distinct[0]) if len(distinct) else None


def _pixel_index_8bit(ids: np.ndarray, values: np.ndarray, modulus: int) -> np.ndarray:
    """:func:`_pixel_index` by two 256-entry OpenCV lookup tables on each 32-bit id's remainder."""
    n = len(values)
    slots = (ids & (modulus - 1) if modulus & (modulus - 1) == 0 else ids % modulus).astype(np.uint8)
    slot_of_value = values % modulus
    index_table = np.full(256, n, dtype=np.uint8)
    value_table = np.full(256, -1, dtype=np.int32)  # the id a slot stands for; -1: none
    index_table[slot_of_value] = np.arange(n)
    value_table[slot_of_value] = values
    index = cv2.LUT(slots, index_table).reshape(ids.shape)  # (OpenCV makes 1-D arrays columns)
    other = cv2.LUT(slots, value_table).reshape(ids.shape) != ids.view(np.int32)  # another id, same remainder
    if other.any():
        index[other] = n
    return index


def accumulate_image(stats: PQStats, gt_ids: np.ndarray, gt_segments: List[Dict], pred_ids: np.ndarray,
                     pred_segments: List[Dict], image_id) -> None:
    """Add one image to ``stats`` by panopticapi's rules (``pq_compute_single_core``), from the id
    maps in memory: a match is a ground-truth and a predicted segment of one category with IoU
    > 0.5, unlabelled (id 0) pixels out of the union; crowd segments match nothing; a prediction
    that is mostly unlabelled or crowd of its category is no false positive.

    Args:
        gt_ids, pred_ids: (H, W) segment ids (0: unlabelled).
        gt_segments: the ground-truth JSON's segments_info ("id", "category_id", "iscrowd", "area").
        pred_segments: [{"id", "category_id"}] with the dataset's category ids.
    """
    gt_segms = {int(s["id"]): s for s in gt_segments}
    pred_segms = {int(s["id"]): s for s in pred_segments}
    pred = pred_ids.reshape(-1)
    if pred.size and 0 <= pred.min() and pred.max() < (1 << 20):  # ids 1..n, as our models give
        pred_values = np.arange(int(pred.max()) + 1)
        pred_index = pred.astype(np.uint8 if len(pred_values) <= 256 else np.int64)
    else:
        pred_values, pred_index = np.unique(pred.astype(np.int64), return_inverse=True)
    gt_values = np.array(sorted({VOID} | set(gt_segms)), dtype=np.int64)
    gt_index = _pixel_index(gt_ids.reshape(-1), gt_values)
    joint = pair_counts(gt_index, pred_index, len(gt_values) + 1, len(pred_values))
    pred_area = joint.sum(0)
    area_of = {int(pred_values[p]): int(pred_area[p]) for p in np.flatnonzero(pred_area)}
    for label in area_of:
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"image {image_id}: segment {label} is in the panoptic map but not in segments_info")
        if pred_segms[label]["category_id"] not in stats.index:
            raise KeyError(f"image {image_id}: segment {label} has unknown category_id "
                           f"{pred_segms[label]['category_id']}")
    if set(pred_segms) - set(area_of):
        raise KeyError(f"image {image_id}: segments {sorted(set(pred_segms) - set(area_of))} are in "
                       "segments_info but not in the panoptic map")

    void_row = joint[0]  # gt_values[0] is VOID

    gt_matched, pred_matched = set(), set()
    rows, cols = np.nonzero(joint[:len(gt_values)])  # in (gt id, pred id) order, as panopticapi's
    for g, p in zip(rows.tolist(), cols.tolist()):
        gt_label, pred_label = int(gt_values[g]), int(pred_values[p])
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        gt_s, pred_s = gt_segms[gt_label], pred_segms[pred_label]
        if gt_s["iscrowd"] == 1 or gt_s["category_id"] != pred_s["category_id"]:
            continue
        intersection = int(joint[g, p])
        union = area_of[pred_label] + gt_s["area"] - intersection - int(void_row[p])
        iou = intersection / union
        if iou > 0.5 and gt_s["category_id"] in stats.index:
            c = stats.index[gt_s["category_id"]]
            stats.tp[c] += 1
            stats.iou[c] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_of_category: Dict[int, int] = {}
    for gt_label, gt_s in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_s["iscrowd"] == 1:
            crowd_of_category[gt_s["category_id"]] = gt_label
            continue
        if gt_s["category_id"] in stats.index:
            stats.fn[stats.index[gt_s["category_id"]]] += 1

    pred_column = {int(v): p for p, v in enumerate(pred_values.tolist())}
    for pred_label, pred_s in pred_segms.items():
        if pred_label in pred_matched:
            continue
        p = pred_column[pred_label]
        ignored = int(void_row[p])
        crowd = crowd_of_category.get(pred_s["category_id"])
        if crowd is not None:
            ignored += int(joint[int(np.searchsorted(gt_values, crowd)), p])
        if ignored / area_of[pred_label] > 0.5:
            continue
        stats.fp[stats.index[pred_s["category_id"]]] += 1
    stats.images += 1


def read_panoptic_png(path: str) -> np.ndarray:
    """(H, W) uint32 segment ids of a COCO panoptic PNG (id = R + 256 G + 256² B)."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read the panoptic PNG {path}")
    rgbx = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    rgbx[..., 3] = 0
    return rgbx.view("<u4")[..., 0]


class InMemoryPanopticEvaluator(COCOPanopticEvaluator):
    """``PanopticEvaluatorWithClasses``'s numbers (PQ, SQ, RQ for all / things / stuff, and
    ``PQ-<class>``) with no PNG round trip: each prediction is compared with its ground-truth
    PNG when it arrives and only the per-category counts are kept (a few numbers per class
    instead of a PNG per image), gathered across processes at the end.

    The stock evaluator also writes ``predictions.json`` (without the PNGs it refers to); this
    one does not.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name, output_dir)
        self._dataset_name = dataset_name
        with PathManager.open(self._metadata.panoptic_json) as f:
            gt_json = json.load(f)
        self._categories = gt_json["categories"]
        self._gt = {ann["image_id"]: ann for ann in gt_json["annotations"]}
        self._gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)

    def reset(self):
        self._stats = PQStats(self._categories)

    def _prediction(self, panoptic_img: np.ndarray,
                    segments_info: Optional[List[Dict]]) -> Tuple[np.ndarray, List[Dict]]:
        """Ids and segments with dataset category ids (detectron2's conversions)."""
        if segments_info is None:  # category * label_divisor + instance, -1 = void: as d2 reads it
            label_divisor = self._metadata.label_divisor
            thing_ids = set(self._metadata.thing_dataset_id_to_contiguous_id.values())
            segments_info = [{"id": int(label) + 1, "category_id": int(label // label_divisor),
                              "isthing": int(label // label_divisor) in thing_ids}
                             for label in np.unique(panoptic_img) if label != -1]
            panoptic_img = panoptic_img + 1
        return panoptic_img, [self._convert_category_id(dict(s)) for s in segments_info]

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for input, output in zip(inputs, outputs):
            gt_ann = self._gt.get(input["image_id"])
            if gt_ann is None:
                continue  # as panopticapi: a prediction of an image without ground truth is not judged
            panoptic_img, segments_info = output["panoptic_seg"]
            pred_ids, pred_segments = self._prediction(panoptic_img.cpu().numpy(), segments_info)
            gt_ids = read_panoptic_png(os.path.join(self._gt_folder, gt_ann["file_name"]))
            accumulate_image(self._stats, gt_ids, gt_ann["segments_info"], pred_ids, pred_segments,
                             input["image_id"])

    def evaluate(self):
        comm.synchronize()
        gathered = comm.gather(self._stats)
        if not comm.is_main_process():
            return
        stats = PQStats(self._categories)
        for part in gathered:
            stats += part
        if stats.images < len(self._gt):
            logger.warning(f"panoptic evaluation of {self._dataset_name}: {stats.images} of {len(self._gt)} "
                           "images have a prediction; PQ is over those")
        pq_res = stats.results()
        res = {f"{key}{suffix}": 100 * pq_res[name][m]
               for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))
               for key, m in (("PQ", "pq"), ("SQ", "sq"), ("RQ", "rq"))}
        res = {k: res[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")}
        res.update(per_class_pq(pq_res, self._dataset_name))
        _print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})
