"""Draw what a trained MaskFormer predicts: one task, or all of them side by side.

* :func:`configure_task`: a config whose ``MODEL.MASK_FORMER.TEST.*_ON`` produce what a
  ``--task`` draws;
* :class:`VisualizationDemo`: a :class:`~maskformer_d2.engine.predictor.MaskFormerPredictor` plus
  each task's drawing from :mod:`maskformer_d2.visualization.drawing` (detectron2's ``Visualizer`` for images,
  ``VideoVisualizer`` for videos); ``all`` puts the renderings side by side.
"""
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode

from ..data.metadata import display_metadata, thing_ids_from_metadata
from ..engine.predictor import MaskFormerPredictor
from ..inference.tasks import TASKS, enabled_tasks, get_task, set_enabled_tasks
from .drawing import DrawContext, drawing_of

__all__ = [
    "ALL",
    "task_choices",
    "configure_task",
    "side_by_side",
    "VisualizationDemo",
    "read_frames",
]

# the --task value that draws every task side by side
ALL = "all"


def task_choices() -> List[str]:
    """The ``--task`` values: every registered task, then "all"."""
    return [*TASKS, ALL]


def _task_names(task: str) -> List[str]:
    if task == ALL:
        return list(TASKS)
    return [get_task(task).name]


def configure_task(cfg: CfgNode, task: Optional[str]) -> CfgNode:
    """A copy of ``cfg`` whose task flags produce exactly what ``task`` draws.

    ``task=None`` keeps the config's flags. Tasks that need thing classes (instance, panoptic)
    need them in the metadata of ``DATASETS.TRAIN[0]`` (as the meta-architecture does); a config
    without them raises ValueError naming the dataset.
    """
    if task is None:
        return cfg.clone()
    if task not in task_choices():
        raise ValueError(f"task {task!r}: choose one of {', '.join(task_choices())}")
    names = _task_names(task)
    needs_things = any(get_task(n).needs_thing_classes for n in names)
    if needs_things and thing_ids_from_metadata(cfg.DATASETS.TRAIN, load_if_needed=True) is None:
        dataset = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else "(none)"
        raise ValueError(
            f"task {task!r} needs thing classes, but DATASETS.TRAIN[0] {dataset!r} defines no "
            "thing_dataset_id_to_contiguous_id; use a panoptic config (e.g. configs/coco-panoptic/...) "
            "or the semantic task"
        )
    return set_enabled_tasks(cfg, names)


def _label_panel(panel: np.ndarray, text: str) -> np.ndarray:
    """Put a band with ``text`` above an (H, W, 3) RGB panel."""
    band = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(band, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, panel], axis=0)


def side_by_side(panels: Sequence[Tuple[str, np.ndarray]]) -> np.ndarray:
    """One panel as is; several (name, (H, W, 3)) panels labelled and concatenated horizontally."""
    if len(panels) == 1:
        return panels[0][1]
    return np.concatenate([_label_panel(img, name) for name, img in panels], axis=1)


class VisualizationDemo:
    """Predict and draw one task (or all side by side) on images and video frames.

    Args:
        cfg: a maskformer_d2 config (MODEL.WEIGHTS set).
        task: a task name, "all", or None to draw the config's own output (the last enabled task
            of the table: panoptic, else instance, else semantic), like the official demo.
        confidence_threshold: instances scoring below it are not drawn.
        instance_mode: detectron2 ``ColorMode`` for instances.
        exported: an exported network to run instead of PyTorch (see ``MaskFormerPredictor``).
    """

    def __init__(
        self,
        cfg: CfgNode,
        task: Optional[str] = None,
        confidence_threshold: float = 0.5,
        instance_mode: ColorMode = ColorMode.IMAGE,
        exported: Optional[str] = None,
    ):
        cfg = configure_task(cfg, task)
        if task is not None:
            self.tasks = [get_task(n) for n in _task_names(task)]
        else:
            enabled = enabled_tasks(cfg)
            if not enabled:
                raise ValueError("the config enables no output (MODEL.MASK_FORMER.TEST.*_ON are all False)")
            self.tasks = enabled[-1:]
        self.predictor = MaskFormerPredictor(cfg, exported=exported)
        self.metadata = display_metadata(cfg)
        self.confidence_threshold = confidence_threshold
        self.instance_mode = instance_mode

    def _context(self, image_rgb: np.ndarray, video: Optional[VideoVisualizer] = None,
                 confidence_threshold: Optional[float] = None) -> DrawContext:
        threshold = self.confidence_threshold if confidence_threshold is None else confidence_threshold
        return DrawContext(image_rgb, self.metadata, self.instance_mode, threshold, video)

    def summarize(self, predictions: Dict) -> str:
        """A few words on what was found, e.g. "12 panoptic segments, 3 instances"."""
        parts = [drawing_of(t.name).summarize(predictions[t.output_key], self.confidence_threshold)
                 for t in reversed(self.tasks)]
        return ", ".join(p for p in parts if p)

    def run_on_image(self, image: np.ndarray) -> Tuple[Dict, np.ndarray]:
        """
        Args:
            image: (H, W, 3) uint8 BGR (as :func:`~maskformer_d2.data.io.read_image` returns by default).

        Returns:
            (the model's output dict, the rendering as (H', W', 3) uint8 RGB; for "all" the
            panels side by side under a title band).
        """
        predictions = self.predictor(image)
        return predictions, self.draw(image, predictions)

    @property
    def task_names(self) -> List[str]:
        """The tasks this demo predicts and draws (those of its ``task``)."""
        return [t.name for t in self.tasks]

    def draw(self, image: np.ndarray, predictions: Dict, task_names: Optional[Sequence[str]] = None,
             confidence_threshold: Optional[float] = None) -> np.ndarray:
        """Draw (some of) the tasks of ``predictions`` of (H, W, 3) uint8 BGR ``image``.

        Args:
            task_names: a subset of :attr:`task_names` (default: all of them), drawn side by side.
            confidence_threshold: instead of the demo's own, for this drawing.

        Returns:
            (H', W', 3) uint8 RGB, as :meth:`run_on_image`.
        """
        names = self.task_names if task_names is None else list(task_names)
        unknown = [n for n in names if n not in self.task_names]
        if unknown or not names:
            raise ValueError(f"cannot draw {', '.join(unknown) or 'nothing'}: this demo predicts "
                             f"{', '.join(self.task_names)}")
        ctx = self._context(image[:, :, ::-1], confidence_threshold=confidence_threshold)
        tasks = [t for t in self.tasks if t.name in names]
        return side_by_side([(t.name, drawing_of(t.name).draw(ctx, predictions[t.output_key])) for t in tasks])

    def run_on_video(self, frames: Iterable[np.ndarray]) -> Iterator[Tuple[Dict, np.ndarray]]:
        """Yield (predictions, rendered BGR frame) for each BGR frame (e.g. of :func:`read_frames`).

        Instances keep their colours from frame to frame (detectron2's ``VideoVisualizer``).
        """
        visualizers = {t.name: VideoVisualizer(self.metadata, self.instance_mode) for t in self.tasks}
        for frame in frames:
            predictions = self.predictor(frame)
            rgb = frame[:, :, ::-1]
            panels = [
                (t.name, drawing_of(t.name).draw(self._context(rgb, visualizers[t.name]),
                                                 predictions[t.output_key]))
                for t in self.tasks
            ]
            yield predictions, np.ascontiguousarray(side_by_side(panels)[:, :, ::-1])


def read_frames(video: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The (H, W, 3) uint8 BGR frames of an opened ``cv2.VideoCapture``, until one cannot be read."""
    while video.isOpened():
        ok, frame = video.read()
        if not ok:
            return
        yield frame
