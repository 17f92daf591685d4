"""Inference: turning the network's class and mask logits into the semantic, instance and
panoptic outputs (pure functions over tensors), and the table of output tasks."""
from .postprocessing import (
    ImagePrediction,
    InferenceOptions,
    class_probabilities,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from .tasks import TASKS, Task, enabled_tasks, get_task, register_task, set_enabled_tasks

__all__ = [
    "ImagePrediction", "InferenceOptions", "class_probabilities", "semantic_inference",
    "panoptic_inference", "instance_inference",
    "TASKS", "Task", "register_task", "get_task", "enabled_tasks", "set_enabled_tasks",
]
