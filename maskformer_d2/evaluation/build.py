"""Which detectron2 evaluators judge a dataset: those of every enabled output task that the
dataset's metadata can judge. Each task's evaluators are attached to the task table of
:mod:`maskformer_d2.inference.tasks` by task name here; a new task's are one
:func:`register_task_evaluators` call.

A panoptic dataset gets several at once, so one model reports PQ, mask AP and mIoU.
"""
import os
from typing import Callable, Dict, List, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from ..inference.tasks import enabled_tasks
from .panoptic import PanopticEvaluatorWithClasses

__all__ = ["build_evaluators", "TASK_EVALUATORS", "register_task_evaluators", "evaluators_of"]

#: ``(dataset name, its metadata, output folder) -> [DatasetEvaluator]`` ([] when the dataset
#: cannot judge the task)
EvaluatorFactory = Callable[[str, Metadata, str], List[DatasetEvaluator]]

#: task name -> its evaluators
TASK_EVALUATORS: Dict[str, EvaluatorFactory] = {}


def register_task_evaluators(name: str, factory: EvaluatorFactory) -> None:
    """Attach evaluators to the output task ``name``."""
    TASK_EVALUATORS[name] = factory


def evaluators_of(name: str, dataset_name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    """The evaluators of task ``name`` for a dataset ([] for a task without evaluators)."""
    factory = TASK_EVALUATORS.get(name)
    return factory(dataset_name, meta, output_folder) if factory is not None else []


def _semantic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    kind = meta.get("evaluator_type", None)
    if kind == "cityscapes_sem_seg":
        return [CityscapesSemSegEvaluator(name)]
    if kind == "sem_seg" or meta.get("sem_seg_root", None) is not None:
        return [SemSegEvaluator(name, distributed=True, output_dir=output_folder)]
    return []


def _instance_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    kind = meta.get("evaluator_type", None)
    if kind == "cityscapes_instance":
        return [CityscapesInstanceEvaluator(name)]
    if kind == "coco" or meta.get("json_file", None) is not None:
        return [COCOEvaluator(name, tasks=("segm",), distributed=True, output_dir=output_folder)]
    return []


def _panoptic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    # what COCOPanopticEvaluator reads; any dataset registered the COCO-panoptic way has them
    if meta.get("panoptic_json", None) is None or meta.get("panoptic_root", None) is None:
        return []
    return [PanopticEvaluatorWithClasses(name, output_folder)]


register_task_evaluators("semantic", _semantic_evaluators)
register_task_evaluators("instance", _instance_evaluators)
register_task_evaluators("panoptic", _panoptic_evaluators)


def build_evaluators(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """All evaluators that apply to ``dataset_name`` given ``MODEL.MASK_FORMER.TEST.*_ON``."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluators: List[DatasetEvaluator] = []
    for task in enabled_tasks(cfg):
        evaluators += evaluators_of(task.name, dataset_name, meta, output_folder)
    if not evaluators:
        kind = meta.get("evaluator_type", None)
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}) with the enabled "
            "tasks; check MODEL.MASK_FORMER.TEST.{SEMANTIC_ON,PANOPTIC_ON,INSTANCE_ON}"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
