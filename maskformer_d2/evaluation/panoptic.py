"""detectron2's ``COCOPanopticEvaluator`` with the per-class PQ that panopticapi computes and
detectron2 drops: results gain ``PQ-<class name>`` keys (as ``SemSegEvaluator`` reports
``IoU-<class>`` and ``COCOEvaluator`` ``AP-<class>``); the aggregate numbers are detectron2's own."""
import contextlib
from typing import Dict, Iterator, List, Optional

import panopticapi.evaluation
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator

__all__ = ["PanopticEvaluatorWithClasses", "per_class_pq"]


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
