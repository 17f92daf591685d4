"""Which detectron2 evaluators judge a dataset: those of every enabled output task that the
dataset's metadata can judge (each task declares its own in :mod:`maskformer_d2.tasks`).

A panoptic dataset gets several at once, so one model reports PQ, mask AP and mIoU.
"""
import os
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from .tasks import enabled_tasks

__all__ = ["build_evaluators"]


def build_evaluators(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """All evaluators that apply to ``dataset_name`` given ``MODEL.MASK_FORMER.TEST.*_ON``."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluators: List[DatasetEvaluator] = []
    for task in enabled_tasks(cfg):
        evaluators += task.evaluators(dataset_name, meta, output_folder)
    if not evaluators:
        kind = meta.get("evaluator_type", None)
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}) with the enabled "
            "tasks; check MODEL.MASK_FORMER.TEST.{SEMANTIC_ON,PANOPTIC_ON,INSTANCE_ON}"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
