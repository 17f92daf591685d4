"""Evaluation: the detectron2 evaluators of each output task, chosen from a dataset's metadata,
or (``TEST.EVALUATOR "fast"``, the default) faster ones with the same numbers."""
from .build import IMPLEMENTATIONS, TASK_EVALUATORS, build_evaluators, evaluators_of, register_task_evaluators
from .instance import FastCOCOEvaluator
from .panoptic import InMemoryPanopticEvaluator, PanopticEvaluatorWithClasses, per_class_pq
from .semantic import FastSemSegEvaluator

__all__ = ["build_evaluators", "TASK_EVALUATORS", "IMPLEMENTATIONS", "register_task_evaluators", "evaluators_of",
           "PanopticEvaluatorWithClasses", "InMemoryPanopticEvaluator", "FastSemSegEvaluator",
           "FastCOCOEvaluator", "per_class_pq"]
