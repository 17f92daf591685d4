"""Which detectron2 evaluators judge a dataset, chosen from its metadata and the enabled tasks.

A panoptic dataset gets several at once, so one model reports PQ, mask AP and mIoU.
"""
import os
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

__all__ = ["build_evaluators"]

_PANOPTIC_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg", "cityscapes_panoptic_seg", "mapillary_vistas_panoptic_seg")


def _evaluator_list(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    meta = MetadataCatalog.get(dataset_name)
    kind = getattr(meta, "evaluator_type", None)
    test = cfg.MODEL.MASK_FORMER.TEST
    evaluators: List[DatasetEvaluator] = []
    if kind in ("sem_seg", "ade20k_panoptic_seg") or (kind in _PANOPTIC_TYPES and test.SEMANTIC_ON):
        if getattr(meta, "sem_seg_root", None) is not None or kind == "sem_seg":
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if kind in _PANOPTIC_TYPES and test.PANOPTIC_ON:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if (kind == "coco" or kind in _PANOPTIC_TYPES) and test.INSTANCE_ON:
        evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), distributed=True, output_dir=output_folder))
    if kind == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    if kind == "cityscapes_instance" and test.INSTANCE_ON:
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    return evaluators


def build_evaluators(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """All evaluators that apply to ``dataset_name`` given ``MODEL.MASK_FORMER.TEST.*_ON``."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluators = _evaluator_list(cfg, dataset_name, output_folder)
    if not evaluators:
        kind = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}) with the enabled "
            "tasks; check MODEL.MASK_FORMER.TEST.{SEMANTIC_ON,PANOPTIC_ON,INSTANCE_ON}"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
