"""How each output task is drawn and summarised in a line, attached to the task table of
:mod:`maskformer_d2.inference.tasks` by task name (drawing is the demo's business, not the model's).

A new task's drawing is one :func:`register_task_drawing` call::

    register_task_drawing("objectness", draw=my_drawing, summarize=lambda out, threshold: "...")
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["DrawContext", "TaskDrawing", "TASK_DRAWINGS", "register_task_drawing", "drawing_of"]


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
class TaskDrawing:
    """How one task's output is shown.

    Attributes:
        draw: ``(DrawContext, output) -> (H, W, 3) uint8 RGB`` rendering.
        summarize: ``(output, confidence threshold) -> str`` such as "3 instances".
    """

    draw: Callable[[DrawContext, Any], np.ndarray]
    summarize: Callable[[Any, float], str] = lambda output, threshold: ""


#: task name -> its drawing
TASK_DRAWINGS: Dict[str, TaskDrawing] = {}


def register_task_drawing(name: str, draw: Callable[[DrawContext, Any], np.ndarray],
                          summarize: Callable[[Any, float], str] = lambda output, threshold: "") -> TaskDrawing:
    """Attach a drawing to the output task ``name``."""
    TASK_DRAWINGS[name] = TaskDrawing(draw, summarize)
    return TASK_DRAWINGS[name]


def drawing_of(name: str) -> TaskDrawing:
    """The drawing of task ``name``, or a KeyError saying how to attach one."""
    if name not in TASK_DRAWINGS:
        raise KeyError(f"output task {name!r} has no drawing; attach one with "
                       "maskformer_d2.visualization.register_task_drawing")
    return TASK_DRAWINGS[name]


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 'es' if what.endswith('s') else 's'}"


def _draw_semantic(ctx: DrawContext, sem_seg) -> np.ndarray:
    labels = sem_seg.argmax(dim=0).to("cpu")
    if ctx.video is not None:
        return ctx.video.draw_sem_seg(ctx.image, labels).get_image()
    return ctx.visualizer().draw_sem_seg(labels).get_image()


def _confident(instances, threshold: float):
    instances = instances.to("cpu")
    return instances[instances.scores > threshold]


def _draw_instances(ctx: DrawContext, instances) -> np.ndarray:
    kept = _confident(instances, ctx.confidence_threshold)
    if ctx.video is not None:
        return ctx.video.draw_instance_predictions(ctx.image, kept).get_image()
    return ctx.visualizer().draw_instance_predictions(kept).get_image()


def _draw_panoptic(ctx: DrawContext, panoptic) -> np.ndarray:
    seg, segments_info = panoptic
    if ctx.video is not None:
        return ctx.video.draw_panoptic_seg_predictions(ctx.image, seg.to("cpu"), segments_info).get_image()
    return ctx.visualizer().draw_panoptic_seg(seg.to("cpu"), segments_info).get_image()


register_task_drawing("semantic", _draw_semantic,
                      lambda out, _: _plural(len(out.argmax(dim=0).unique()), "semantic class"))
register_task_drawing("instance", _draw_instances,
                      lambda out, threshold: _plural(len(_confident(out, threshold)), "instance"))
register_task_drawing("panoptic", _draw_panoptic, lambda out, _: _plural(len(out[1]), "panoptic segment"))
