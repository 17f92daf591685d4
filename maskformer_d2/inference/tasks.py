"""The output tasks, declared once: what each is called, its config switch, its post-processor,
the detectron2 evaluators that judge it and how it is drawn.

Every consumer reads this table: the meta-architecture (which outputs to compute), the
predictor and demo (``--task`` choices, drawing), the trainer's evaluators and
``add_maskformer_config`` (the ``MODEL.MASK_FORMER.TEST.<FLAG>`` keys). A new output is one
:class:`Task` given to :func:`register_task` plus its post-processing function::

    register_task(Task(name="objectness", output_key="objectness", config_flag="OBJECTNESS_ON",
                       postprocess=my_function, draw=my_drawing))

Tasks are listed in registration order; the demo's default is the last enabled one (panoptic,
else instance, else semantic for the built-in three).
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from detectron2.config import CfgNode
from detectron2.data.catalog import Metadata
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    SemSegEvaluator,
)
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from .postprocessing import (
    ImagePrediction,
    InferenceOptions,
    instance_output,
    panoptic_output,
    semantic_output,
)

__all__ = [
    "Task",
    "DrawContext",
    "TASKS",
    "register_task",
    "get_task",
    "enabled_tasks",
    "set_enabled_tasks",
]


@dataclass(frozen=True)
class DrawContext:
    """What a task's drawing function gets besides the model output.

    Attributes:
        image: (H, W, 3) uint8 RGB picture the output belongs to.
        metadata: class names and colours (see ``maskformer_d2.visualization.display_metadata``).
        instance_mode: detectron2 ``ColorMode`` for instances.
        confidence_threshold: instances scoring below it are not drawn.
        video: a ``VideoVisualizer`` when drawing video frames (keeps colours across frames).
    """

    image: np.ndarray
    metadata: Metadata
    instance_mode: ColorMode = ColorMode.IMAGE
    confidence_threshold: float = 0.5
    video: Optional[VideoVisualizer] = None

    def visualizer(self) -> Visualizer:
        return Visualizer(self.image, self.metadata, instance_mode=self.instance_mode)


@dataclass(frozen=True)
class Task:
    """One output of the model.

    Attributes:
        name: the ``--task`` value, e.g. "panoptic".
        output_key: the key of the model's per-image output dict, e.g. "panoptic_seg".
        config_flag: ``MODEL.MASK_FORMER.TEST.<config_flag>`` switches the task on.
        postprocess: ``(ImagePrediction, InferenceOptions) -> output``.
        draw: ``(DrawContext, output) -> (H, W, 3) uint8 RGB`` rendering.
        evaluators: ``(dataset name, its metadata, output folder) -> [DatasetEvaluator]`` that
            judge this output on a dataset ([] when the dataset cannot judge it).
        summarize: ``(output, confidence threshold) -> str`` such as "3 instances".
        needs_thing_classes: the dataset must say which classes are things.
        enabled_by_default: the default of the config flag.
    """

    name: str
    output_key: str
    config_flag: str
    postprocess: Callable[[ImagePrediction, InferenceOptions], Any]
    draw: Callable[[DrawContext, Any], np.ndarray]
    evaluators: Callable[[str, Metadata, str], List[DatasetEvaluator]] = lambda *_: []
    summarize: Callable[[Any, float], str] = lambda output, threshold: ""
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


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 'es' if what.endswith('s') else 's'}"


# ----------------------------------------------------------------------------- semantic
def _semantic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    kind = meta.get("evaluator_type", None)
    if kind == "cityscapes_sem_seg":
        return [CityscapesSemSegEvaluator(name)]
    if kind == "sem_seg" or meta.get("sem_seg_root", None) is not None:
        return [SemSegEvaluator(name, distributed=True, output_dir=output_folder)]
    return []


def _draw_semantic(ctx: DrawContext, sem_seg) -> np.ndarray:
    labels = sem_seg.argmax(dim=0).to("cpu")
    if ctx.video is not None:
        return ctx.video.draw_sem_seg(ctx.image, labels).get_image()
    return ctx.visualizer().draw_sem_seg(labels).get_image()


# ----------------------------------------------------------------------------- instance
def _instance_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    kind = meta.get("evaluator_type", None)
    if kind == "cityscapes_instance":
        return [CityscapesInstanceEvaluator(name)]
    if kind == "coco" or meta.get("json_file", None) is not None:
        return [COCOEvaluator(name, tasks=("segm",), distributed=True, output_dir=output_folder)]
    return []


def _confident(instances, threshold: float):
    instances = instances.to("cpu")
    return instances[instances.scores > threshold]


def _draw_instances(ctx: DrawContext, instances) -> np.ndarray:
    kept = _confident(instances, ctx.confidence_threshold)
    if ctx.video is not None:
        return ctx.video.draw_instance_predictions(ctx.image, kept).get_image()
    return ctx.visualizer().draw_instance_predictions(kept).get_image()


# ----------------------------------------------------------------------------- panoptic
def _panoptic_evaluators(name: str, meta: Metadata, output_folder: str) -> List[DatasetEvaluator]:
    # what COCOPanopticEvaluator reads; any dataset registered the COCO-panoptic way has them
    if meta.get("panoptic_json", None) is None or meta.get("panoptic_root", None) is None:
        return []
    return [COCOPanopticEvaluator(name, output_folder)]


def _draw_panoptic(ctx: DrawContext, panoptic) -> np.ndarray:
    seg, segments_info = panoptic
    if ctx.video is not None:
        return ctx.video.draw_panoptic_seg_predictions(ctx.image, seg.to("cpu"), segments_info).get_image()
    return ctx.visualizer().draw_panoptic_seg(seg.to("cpu"), segments_info).get_image()


# ----------------------------------------------------------------------------- the table
register_task(Task(
    name="semantic", output_key="sem_seg", config_flag="SEMANTIC_ON",
    postprocess=semantic_output, draw=_draw_semantic, evaluators=_semantic_evaluators,
    summarize=lambda out, _: _plural(len(out.argmax(dim=0).unique()), "semantic class"),
    enabled_by_default=True,  # ours (the official MaskFormer always returned sem_seg)
))
register_task(Task(
    name="instance", output_key="instances", config_flag="INSTANCE_ON",
    postprocess=instance_output, draw=_draw_instances, evaluators=_instance_evaluators,
    summarize=lambda out, threshold: _plural(len(_confident(out, threshold)), "instance"),
    needs_thing_classes=True,
))
register_task(Task(
    name="panoptic", output_key="panoptic_seg", config_flag="PANOPTIC_ON",
    postprocess=panoptic_output, draw=_draw_panoptic, evaluators=_panoptic_evaluators,
    summarize=lambda out, _: _plural(len(out[1]), "panoptic segment"),
    needs_thing_classes=True,
))
