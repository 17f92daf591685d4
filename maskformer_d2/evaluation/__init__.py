"""Evaluation: the detectron2 evaluators of each output task, chosen from a dataset's metadata."""
from .build import TASK_EVALUATORS, build_evaluators, evaluators_of, register_task_evaluators
from .panoptic import PanopticEvaluatorWithClasses, per_class_pq

__all__ = ["build_evaluators", "TASK_EVALUATORS", "register_task_evaluators", "evaluators_of",
           "PanopticEvaluatorWithClasses", "per_class_pq"]
