"""The output tasks, declared once: what each is called, its config switch and its
post-processor.

Every consumer reads this table: the meta-architecture (which outputs to compute),
``add_maskformer_config`` (the ``MODEL.MASK_FORMER.TEST.<FLAG>`` keys), the evaluators
(:mod:`maskformer_d2.evaluation`, which attach a task's detectron2 evaluators by its name) and
the demo (:mod:`maskformer_d2.visualization`, which attaches its drawing). A new output is one
:class:`Task` given to :func:`register_task` plus its post-processing function::

    register_task(Task(name="objectness", output_key="objectness", config_flag="OBJECTNESS_ON",
                       postprocess=my_function))
    register_task_drawing("objectness", my_drawing)         # to draw it (optional)
    register_task_evaluators("objectness", my_evaluators)   # to evaluate it (optional)

Tasks are listed in registration order; the demo's default is the last enabled one (panoptic,
else instance, else semantic for the built-in three).
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from detectron2.config import CfgNode

from .postprocessing import (
    ImagePrediction,
    InferenceOptions,
    instance_output,
    panoptic_output,
    semantic_output,
)

__all__ = [
    "Task",
    "TASKS",
    "register_task",
    "get_task",
    "enabled_tasks",
    "set_enabled_tasks",
]


@dataclass(frozen=True)
class Task:
    """One output of the model.

    Attributes:
        name: the ``--task`` value, e.g. "panoptic".
        output_key: the key of the model's per-image output dict, e.g. "panoptic_seg".
        config_flag: ``MODEL.MASK_FORMER.TEST.<config_flag>`` switches the task on.
        postprocess: ``(ImagePrediction, InferenceOptions) -> output``.
        needs_thing_classes: the dataset must say which classes are things.
        enabled_by_default: the default of the config flag.
    """

    name: str
    output_key: str
    config_flag: str
    postprocess: Callable[[ImagePrediction, InferenceOptions], Any]
    needs_thing_classes: bool = False
    enabled_by_default: bool = False

#: name -> Task, in registration order
TASKS: Dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS`; a second task of the same name is an error."""
    if task.name in TASKS and TASKS[task.name] != task:
        raise KeyError(f"an output task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"output task {name!r} is unknown; known: {', '.join(TASKS)}")
    return TASKS[name]


def enabled_tasks(cfg: CfgNode) -> List[Task]:
    """The tasks ``MODEL.MASK_FORMER.TEST.*`` switches on, in table order."""
    test = cfg.MODEL.MASK_FORMER.TEST
    return [t for t in TASKS.values() if test.get(t.config_flag, False)]


def set_enabled_tasks(cfg: CfgNode, names: List[str]) -> CfgNode:
    """A copy of ``cfg`` whose task flags switch on exactly ``names``."""
    wanted = {get_task(n).name for n in names}
    cfg = cfg.clone()
    cfg.defrost()
    for task in TASKS.values():
        cfg.MODEL.MASK_FORMER.TEST[task.config_flag] = task.name in wanted
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------- the table
register_task(Task(
    name="semantic", output_key="sem_seg", config_flag="SEMANTIC_ON", postprocess=semantic_output,
    enabled_by_default=True,  # ours (the official MaskFormer always returned sem_seg)
))
register_task(Task(
    name="instance", output_key="instances", config_flag="INSTANCE_ON", postprocess=instance_output,
    needs_thing_classes=True,
))
register_task(Task(
    name="panoptic", output_key="panoptic_seg", config_flag="PANOPTIC_ON", postprocess=panoptic_output,
    needs_thing_classes=True,
))
