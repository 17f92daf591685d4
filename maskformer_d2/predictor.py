"""Run a trained MaskFormer on images or video frames and draw what it predicts.

* :func:`read_image`: any image file (grayscale, RGBA, palette, 16-bit, EXIF-rotated) as a 3-channel
  uint8 array, or one :class:`ImageReadError` line naming the file and what is wrong with it.
* :class:`MaskFormerPredictor`: detectron2's ``DefaultPredictor`` for MaskFormer: the model in eval
  mode, weights loaded strictly (:class:`~maskformer_d2.checkpoint.MaskFormerCheckpointer`),
  ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, BGR input by default converted
  to ``INPUT.FORMAT``; returns the model's output dict for the image.
* :class:`VisualizationDemo`: a predictor configured for one task (semantic / instance / panoptic /
  all) plus detectron2's ``Visualizer`` (images) and ``VideoVisualizer`` (videos); ``all`` puts the
  three renderings side by side.
"""
import functools
import logging
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import detectron2.data.transforms as T
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.utils.colormap import colormap
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from .checkpoint import MaskFormerCheckpointer
from .modeling.meta_arch import thing_ids_from_metadata

__all__ = [
    "TASKS",
    "ImageReadError",
    "read_image",
    "configure_task",
    "display_metadata",
    "MaskFormerPredictor",
    "VisualizationDemo",
    "read_frames",
]

logger = logging.getLogger(__name__)

# --task choices; "all" renders the three side by side
TASKS = ("semantic", "instance", "panoptic", "all")
_OUTPUT_KEY = {"semantic": "sem_seg", "instance": "instances", "panoptic": "panoptic_seg"}
_FLAG = {"semantic": "SEMANTIC_ON", "instance": "INSTANCE_ON", "panoptic": "PANOPTIC_ON"}


# ----------------------------------------------------------------------------- reading images
class ImageReadError(OSError):
    """An input image is missing or cannot be decoded; ``str()`` is one line naming the file."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a decoded high-bit-depth / float array to 0..255 uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return np.round(array.astype(np.float64) / 257.0).clip(0, 255).astype(np.uint8)  # 65535 -> 255
    if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
        array = array * 255.0
    return np.round(array.astype(np.float64)).clip(0, 255).astype(np.uint8)


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 in ``format`` ("BGR" or "RGB").

    Grayscale is repeated to 3 channels, alpha is dropped, 16-bit images are scaled to 8 bits
    (65535 -> 255), EXIF orientation is applied (as detectron2's ``read_image`` does).

    Raises:
        ImageReadError: missing file, not an image, corrupt or truncated data.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image: format must be 'BGR' or 'RGB', got {format!r}")
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything now, so truncated files fail here
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                gray = _to_uint8(np.asarray(img))
                rgb = np.repeat(gray[:, :, None], 3, axis=2)
            else:
                rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: corrupt or truncated image ({e})") from None
    rgb = np.ascontiguousarray(rgb)
    return rgb[:, :, ::-1].copy() if format == "BGR" else rgb


# ----------------------------------------------------------------------------- configuration
def configure_task(cfg: CfgNode, task: Optional[str]) -> CfgNode:
    """A copy of ``cfg`` whose ``MODEL.MASK_FORMER.TEST.*_ON`` produce exactly what ``task`` draws.

    ``task=None`` keeps the config's flags. Instance and panoptic output need the thing classes of
    ``DATASETS.TRAIN[0]`` (as the meta-architecture does); a config without them raises ValueError
    naming the dataset.
    """
    cfg = cfg.clone()
    if task is None:
        return cfg
    if task not in TASKS:
        raise ValueError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    wanted = set(_FLAG) if task == "all" else {task}
    if wanted & {"instance", "panoptic"} and thing_ids_from_metadata(cfg.DATASETS.TRAIN) is None:
        dataset = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else "(none)"
        raise ValueError(
            f"task {task!r} needs thing classes, but DATASETS.TRAIN[0] {dataset!r} defines no "
            "thing_dataset_id_to_contiguous_id; use a panoptic config (e.g. configs/coco-panoptic/...) "
            "or the semantic task"
        )
    cfg.defrost()
    for name, flag in _FLAG.items():
        cfg.MODEL.MASK_FORMER.TEST[flag] = name in wanted
    cfg.freeze()
    return cfg


def enabled_tasks(cfg: CfgNode) -> List[str]:
    """The tasks whose output the model built from ``cfg`` returns, in ``TASKS`` order."""
    return [name for name, flag in _FLAG.items() if cfg.MODEL.MASK_FORMER.TEST[flag]]


def display_metadata(cfg: CfgNode) -> Metadata:
    """Class names and colours to draw with, indexed by the model's contiguous class id.

    Taken from the metadata of ``DATASETS.TEST[0]`` (else ``TRAIN[0]``): its ``stuff_classes`` or
    ``thing_classes``, whichever lists all ``NUM_CLASSES`` classes (MaskFormer predicts one id
    space for things and stuff). Without such metadata, classes are called "class <i>".
    The result has both ``stuff_*`` and ``thing_*`` set to the full lists, so detectron2's
    ``Visualizer`` finds a name for every id in every task.
    """
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    source = MetadataCatalog.get(names[0]) if names else Metadata()
    classes: Optional[List[str]] = None
    colors: Optional[List] = None
    for field in ("stuff", "thing"):
        candidate = source.get(f"{field}_classes", None)
        if candidate is not None and len(candidate) == num_classes:
            classes = list(candidate)
            candidate_colors = source.get(f"{field}_colors", None)
            if candidate_colors is not None and len(candidate_colors) == num_classes:
                colors = [tuple(int(c) for c in color) for color in candidate_colors]
            break
    if classes is None:
        if names:
            logger.warning(
                "the metadata of %r lists no %d class names (MODEL.SEM_SEG_HEAD.NUM_CLASSES); drawing "
                "class numbers", names[0], num_classes,
            )
        classes = [f"class {i}" for i in range(num_classes)]
    if colors is None:
        palette = colormap(rgb=True, maximum=255)
        colors = [tuple(int(c) for c in palette[i % len(palette)]) for i in range(num_classes)]
    return Metadata(
        name=f"maskformer_d2_display:{names[0] if names else ''}",
        stuff_classes=classes,
        stuff_colors=colors,
        thing_classes=classes,
        thing_colors=colors,
    )


# ----------------------------------------------------------------------------- predictor
class MaskFormerPredictor:
    """Single-image inference, like detectron2's ``DefaultPredictor``.

    Builds the model from ``cfg`` (eval mode), loads ``MODEL.WEIGHTS`` strictly, and for each
    image resizes the shorter side to ``INPUT.MIN_SIZE_TEST`` (longer side at most
    ``INPUT.MAX_SIZE_TEST``; no resizing when MIN_SIZE_TEST is 0). A ``MODEL.DEVICE`` of cuda on a
    machine without CUDA falls back to the CPU with a warning.

    Args:
        cfg: a maskformer_d2 config.
        input_format: channel order of the arrays passed to ``__call__`` ("BGR" as cv2 reads).
    """

    def __init__(self, cfg: CfgNode, input_format: str = "BGR"):
        self.cfg = cfg.clone()
        if self.cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            logger.warning("MODEL.DEVICE is %s but CUDA is not available; running on the CPU", cfg.MODEL.DEVICE)
            self.cfg.defrost()
            self.cfg.MODEL.DEVICE = "cpu"
        self.cfg.freeze()
        if input_format not in ("BGR", "RGB") or self.cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise ValueError(
                f"MaskFormerPredictor: input format {input_format!r} / INPUT.FORMAT {self.cfg.INPUT.FORMAT!r}; "
                "both must be 'BGR' or 'RGB'"
            )
        self.input_format = input_format
        self.model = build_model(self.cfg)
        self.model.eval()
        if self.cfg.MODEL.WEIGHTS:
            MaskFormerCheckpointer(self.model).load(self.cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the model has random weights")
        size = self.cfg.INPUT.MIN_SIZE_TEST
        self.aug = T.ResizeShortestEdge([size, size], self.cfg.INPUT.MAX_SIZE_TEST) if size > 0 else None

    def __call__(self, image: np.ndarray) -> Dict:
        """
        Args:
            image: (H, W, 3) uint8 in ``input_format`` order.

        Returns:
            the model's output for the image, at H x W: any of "sem_seg" (K, H, W) scores,
            "panoptic_seg" ((H, W) int32 segment ids, segments_info), "instances" (Instances).
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MaskFormerPredictor takes (H, W, 3) images, got shape {image.shape}")
        if self.input_format != self.cfg.INPUT.FORMAT:
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image) if self.aug is not None else image
        tensor = torch.as_tensor(np.ascontiguousarray(resized).astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]


# ----------------------------------------------------------------------------- rendering
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
    """Predict and draw one task (or all three side by side) on images and video frames.

    Args:
        cfg: a maskformer_d2 config (MODEL.WEIGHTS set).
        task: one of :data:`TASKS`, or None to draw the config's own output (panoptic if enabled,
            else instance, else semantic), like the official demo.
        confidence_threshold: instances scoring below it are not drawn.
        instance_mode: detectron2 ``ColorMode`` for instances.
    """

    def __init__(
        self,
        cfg: CfgNode,
        task: Optional[str] = None,
        confidence_threshold: float = 0.5,
        instance_mode: ColorMode = ColorMode.IMAGE,
    ):
        cfg = configure_task(cfg, task)
        enabled = enabled_tasks(cfg)
        if task == "all":
            self.tasks = list(_FLAG)
        elif task is not None:
            self.tasks = [task]
        else:
            first = next((t for t in ("panoptic", "instance", "semantic") if t in enabled), None)
            if first is None:
                raise ValueError("the config enables no output (MODEL.MASK_FORMER.TEST.*_ON are all False)")
            self.tasks = [first]
        self.predictor = MaskFormerPredictor(cfg)
        self.metadata = display_metadata(cfg)
        self.confidence_threshold = confidence_threshold
        self.instance_mode = instance_mode

    # -- drawing one task
    def _instances(self, predictions: Dict):
        instances = predictions["instances"].to("cpu")
        return instances[instances.scores > self.confidence_threshold]

    def _draw(
        self, task: str, image_rgb: np.ndarray, predictions: Dict, video: Optional[VideoVisualizer] = None
    ) -> np.ndarray:
        """Render one task's output on ``image_rgb`` with a ``Visualizer`` (or ``video``'s)."""
        if video is None:
            visualizer = Visualizer(image_rgb, self.metadata, instance_mode=self.instance_mode)
            draw_sem, draw_inst = visualizer.draw_sem_seg, visualizer.draw_instance_predictions
            draw_pan = visualizer.draw_panoptic_seg
        else:
            draw_sem = functools.partial(video.draw_sem_seg, image_rgb)
            draw_inst = functools.partial(video.draw_instance_predictions, image_rgb)
            draw_pan = functools.partial(video.draw_panoptic_seg_predictions, image_rgb)
        if task == "semantic":
            vis = draw_sem(predictions["sem_seg"].argmax(dim=0).to("cpu"))
        elif task == "instance":
            vis = draw_inst(self._instances(predictions))
        else:
            seg, segments_info = predictions["panoptic_seg"]
            vis = draw_pan(seg.to("cpu"), segments_info)
        return vis.get_image()

    def summarize(self, predictions: Dict) -> str:
        """A few words on what was found, e.g. "12 panoptic segments, 3 instances"."""

        def count(n: int, what: str) -> str:
            return f"{n} {what}{'' if n == 1 else 'es' if what.endswith('s') else 's'}"

        parts = []
        if "panoptic" in self.tasks:
            parts.append(count(len(predictions["panoptic_seg"][1]), "panoptic segment"))
        if "instance" in self.tasks:
            parts.append(count(len(self._instances(predictions)), "instance"))
        if "semantic" in self.tasks:
            parts.append(count(len(predictions["sem_seg"].argmax(dim=0).unique()), "semantic class"))
        return ", ".join(parts)

    def run_on_image(self, image: np.ndarray) -> Tuple[Dict, np.ndarray]:
        """
        Args:
            image: (H, W, 3) uint8 BGR (as :func:`read_image` returns by default).

        Returns:
            (the model's output dict, the rendering as (H', W', 3) uint8 RGB; for "all" the three
            panels side by side under a title band).
        """
        predictions = self.predictor(image)
        image_rgb = image[:, :, ::-1]
        panels = [(task, self._draw(task, image_rgb, predictions)) for task in self.tasks]
        return predictions, side_by_side(panels)

    def run_on_video(self, frames: Iterable[np.ndarray]) -> Iterator[Tuple[Dict, np.ndarray]]:
        """Yield (predictions, rendered BGR frame) for each BGR frame (e.g. of :func:`read_frames`).

        Instances keep their colours from frame to frame (detectron2's ``VideoVisualizer``).
        """
        visualizers = {task: VideoVisualizer(self.metadata, self.instance_mode) for task in self.tasks}
        for frame in frames:
            predictions = self.predictor(frame)
            rgb = frame[:, :, ::-1]
            panels = [(task, self._draw(task, rgb, predictions, vv)) for task, vv in visualizers.items()]
            yield predictions, np.ascontiguousarray(side_by_side(panels)[:, :, ::-1])


def read_frames(video: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The (H, W, 3) uint8 BGR frames of an opened ``cv2.VideoCapture``, until one cannot be read."""
    while video.isOpened():
        ok, frame = video.read()
        if not ok:
            return
        yield frame
