"""Which detectron2 evaluators judge a dataset: those of every enabled output task that the
dataset's metadata can judge. Each task's evaluators are attached to the task table of
:mod:`maskformer_d2.inference.tasks` by task name here; a new task's are one
:func:`register_task_evaluators` call.

A panoptic dataset gets several at once, so one model reports PQ, mask AP and mIoU.

Two implementations with the same numbers, chosen by ``TEST.EVALUATOR``: ``"fast"`` (default:
:mod:`.semantic`, :mod:`.instance`, and panoptic quality in memory) and ``"detectron2"`` (the
stock evaluators). A task without a fast evaluator gets its detectron2 one.
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
from .instance import FastCOCOEvaluator
from .panoptic import InMemoryPanopticEvaluator, PanopticEvaluatorWithClasses
from .semantic import FastSemSegEvaluator

__all__ = ["build_evaluators", "TASK_EVALUATORS", "IMPLEMENTATIONS", "register_task_evaluators",
           "evaluators_of"]

#: ``(dataset name, its metadata, output folder) -> [DatasetEvaluator]`` ([] when the dataset
#: cannot judge the task)
EvaluatorFactory = Callable[[str, Metadata, str], List[DatasetEvaluator]]

#: the values of ``TEST.EVALUATOR``
IMPLEMENTATIONS = ("fast", "detectron2")

#: implementation -> task name -> its evaluators
TASK_EVALUATORS: Dict[str, Dict[str, EvaluatorFactory]] = {impl: {} for impl in IMPLEMENTATIONS}


def register_task_evaluators(name: str, factory: EvaluatorFactory, implementation: str = "detectron2") -> None:
    """Attach evaluators to the output task ``name`` (used by both implementations unless a
    ``"fast"`` one is registered too)."""
    if implementation not in TASK_EVALUATORS:
        raise ValueError(f"evaluator implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
    TASK_EVALUATORS[implementation][name] = factory


def evaluators_of(name: str, dataset_name: str, meta: Metadata, output_folder: str,
                  implementation: str = "fast") -> List[DatasetEvaluator]:
    """The evaluators of task ``name`` for a dataset ([] for a task without evaluators)."""
    if implementation not in TASK_EVALUATORS:
        raise ValueError(f"TEST.EVALUATOR is {implementation!r}; use one of {', '.join(IMPLEMENTATIONS)}")
    factory = TASK_EVALUATORS[implementation].get(name) or TASK_EVALUATORS["detectron2"].get(name)
    return factory(dataset_name, meta, output_folder) if factory is not None else []


def _judges_semantic(meta: Metadata) -> bool:
    return meta.get("evaluator_type", None) == "sem_seg" or meta.get("sem_seg_root", None) is not None


def _judges_instances(meta: Metadata) -> bool:
    return meta.get("evaluator_type", None) == "coco" or meta.get("json_file", None) is not None


def _judges_panoptic(meta: Metadata) -> bool:
    # what COCOPanopticEvaluator reads; any dataset registered the COCO-panoptic way has them
    return meta.get("panoptic_json", None) is not None and meta.get("panoptic_root", None) is not None


def _semantic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    if meta.get("evaluator_type", None) == "cityscapes_sem_seg":
        return [CityscapesSemSegEvaluator(name)]
    return [SemSegEvaluator(name, distributed=True, output_dir=output_folder)] if _judges_semantic(meta) else []


def _instance_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    if meta.get("evaluator_type", None) == "cityscapes_instance":
        return [CityscapesInstanceEvaluator(name)]
    if _judges_instances(meta):
        return [COCOEvaluator(name, tasks=("segm",), distributed=True, output_dir=output_folder)]
    return []


def _panoptic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    return [PanopticEvaluatorWithClasses(name, output_folder)] if _judges_panoptic(meta) else []


def _fast_semantic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    if meta.get("evaluator_type", None) == "cityscapes_sem_seg" or not _judges_semantic(meta):
        return _semantic_evaluators(name, meta, output_folder)
    return [FastSemSegEvaluator(name, distributed=True, output_dir=output_folder)]


def _fast_instance_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    if meta.get("evaluator_type", None) == "cityscapes_instance" or not _judges_instances(meta):
        return _instance_evaluators(name, meta, output_folder)
    return [FastCOCOEvaluator(name, tasks=("segm",), distributed=True, output_dir=output_folder)]


def _fast_panoptic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    return [InMemoryPanopticEvaluator(name, output_folder)] if _judges_panoptic(meta) else []


register_task_evaluators("semantic", _semantic_evaluators)
register_task_evaluators("instance", _instance_evaluators)
register_task_evaluators("panoptic", _panoptic_evaluators)
register_task_evaluators("semantic", _fast_semantic_evaluators, "fast")
register_task_evaluators("instance", _fast_instance_evaluators, "fast")
register_task_evaluators("panoptic", _fast_panoptic_evaluators, "fast")


def build_evaluators(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """All evaluators that apply to ``dataset_name`` given ``MODEL.MASK_FORMER.TEST.*_ON``, of
    the implementation ``TEST.EVALUATOR`` names."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluators: List[DatasetEvaluator] = []
    for task in enabled_tasks(cfg):
        evaluators += evaluators_of(task.name, dataset_name, meta, output_folder, cfg.TEST.EVALUATOR)
    if not evaluators:
        kind = meta.get("evaluator_type", None)
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}) with the enabled "
            "tasks; check MODEL.MASK_FORMER.TEST.{SEMANTIC_ON,PANOPTIC_ON,INSTANCE_ON}"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
