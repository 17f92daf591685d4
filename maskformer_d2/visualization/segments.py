"""What a picture's legend lists: each segment a task found, with its class, colour, score and
area, and the same as JSON for download.

* semantic: one entry per class present in the argmax; its score is the mean over its pixels of
  the class's share of the pixel's semantic scores (Σ softmax-class × sigmoid-mask, which is no
  probability: it can pass 1 where masks overlap), so it lies in [0, 1];
* instance: one entry per instance scoring above the threshold (its score; its mask's area);
* panoptic: one entry per segment; its score is the same share for the segment's class over the
  segment when the semantic output is there, else none (panoptic inference keeps no score).
"""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data.catalog import Metadata

from ..inference.tasks import get_task

__all__ = ["Segment", "describe_segments", "segments_record"]


@dataclass(frozen=True)
class Segment:
    """One legend entry. ``area`` in pixels of the output (the input image's size)."""

    task: str
    id: int
    category: str
    category_id: int
    score: Optional[float]
    area: int
    color: Tuple[int, int, int]

    @property
    def hex_color(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.color)


def _name_and_color(metadata: Metadata, class_id: int) -> Tuple[str, Tuple[int, int, int]]:
    names = metadata.get("stuff_classes", None) or metadata.get("thing_classes", None) or []
    colors = metadata.get("stuff_colors", None) or metadata.get("thing_colors", None) or []
    name = names[class_id] if class_id < len(names) else f"class {class_id}"
    color = tuple(int(c) for c in colors[class_id]) if class_id < len(colors) else (128, 128, 128)
    return name, color


def _mean_by_label(scores: torch.Tensor, labels: torch.Tensor, num: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(per-label pixel counts (num,), per-label mean of ``scores`` (num,)) for (H, W) ``labels``."""
    counts = torch.bincount(labels.flatten(), minlength=num)
    sums = torch.zeros(num, dtype=torch.float64).index_add_(0, labels.flatten(), scores.flatten().double())
    return counts, sums / counts.clamp(min=1)


def _shares(sem_seg: torch.Tensor) -> torch.Tensor:
    """(K, H, W) semantic scores -> each class's share of its pixel's total, in [0, 1]."""
    sem_seg = sem_seg.double()
    return sem_seg / sem_seg.sum(dim=0, keepdim=True).clamp(min=1e-12)


def _semantic(sem_seg: torch.Tensor, metadata: Metadata) -> List[Segment]:
    labels = sem_seg.argmax(dim=0)
    chosen = _shares(sem_seg).gather(0, labels[None])[0]
    counts, means = _mean_by_label(chosen, labels, sem_seg.shape[0])
    out = []
    for c in torch.nonzero(counts).flatten().tolist():
        name, color = _name_and_color(metadata, c)
        out.append(Segment("semantic", c, name, c, float(means[c]), int(counts[c]), color))
    return sorted(out, key=lambda s: -s.area)


def _instance(instances, metadata: Metadata, threshold: float) -> List[Segment]:
    kept = instances[instances.scores > threshold]
    areas = kept.pred_masks.flatten(1).sum(dim=1) if len(kept) else torch.zeros(0)
    out = []
    for i, (c, score, area) in enumerate(zip(kept.pred_classes.tolist(), kept.scores.tolist(), areas.tolist())):
        name, color = _name_and_color(metadata, c)
        out.append(Segment("instance", i + 1, name, c, float(score), int(area), color))
    return sorted(out, key=lambda s: -(s.score or 0.0))


def _panoptic(panoptic, metadata: Metadata, sem_seg: Optional[torch.Tensor]) -> List[Segment]:
    seg, segments_info = panoptic
    seg = seg.long()
    num = int(seg.max()) + 1 if seg.numel() else 1
    counts = torch.bincount(seg.flatten(), minlength=num)
    shares = _shares(sem_seg) if sem_seg is not None else None
    out = []
    for info in segments_info:
        c, sid = int(info["category_id"]), int(info["id"])
        score = None
        if shares is not None and counts[sid] > 0:
            score = float(shares[c][seg == sid].mean())
        name, color = _name_and_color(metadata, c)
        out.append(Segment("panoptic", sid, name, c, score, int(counts[sid]), color))
    return out


def describe_segments(predictions: Dict, task_names: Sequence[str], metadata: Metadata,
                      threshold: float = 0.5) -> List[Segment]:
    """The legend entries of ``task_names`` (registered task names) in a model output.

    Args:
        predictions: one image's output of the model / predictor ("sem_seg": (K, H, W),
            "instances": Instances, "panoptic_seg": ((H, W) ids, segments_info)).
        task_names: which tasks to describe, in this order; a task whose output is missing is skipped.
        metadata: class names and colours (``display_metadata``).
        threshold: instances scoring at or below it are left out (as they are not drawn).
    """
    sem_seg = predictions.get("sem_seg")
    sem_seg = sem_seg.to("cpu") if sem_seg is not None else None
    out: List[Segment] = []
    for name in task_names:
        output = predictions.get(get_task(name).output_key)
        if output is None:
            continue
        if name == "semantic":
            out += _semantic(sem_seg, metadata)
        elif name == "instance":
            out += _instance(output.to("cpu"), metadata, threshold)
        elif name == "panoptic":
            out += _panoptic((output[0].to("cpu"), output[1]), metadata, sem_seg)
    return out


def segments_record(segments: Sequence[Segment], height: int, width: int, tasks: Sequence[str],
                    threshold: float) -> Dict:
    """The downloadable JSON of a result: image size, tasks, threshold and every segment."""
    return {
        "image": {"height": height, "width": width},
        "tasks": list(tasks),
        "confidence_threshold": threshold,
        "segments": [dict(asdict(s), color=s.hex_color, area_fraction=s.area / max(1, height * width))
                     for s in segments],
    }
