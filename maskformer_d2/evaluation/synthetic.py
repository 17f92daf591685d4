"""A synthetic evaluation set, to check and time evaluators without a model or a download.

Ground truth in the formats detectron2's evaluators read (panoptic PNG + JSON, semantic PNG,
COCO instance JSON with RLE masks, crowd segments and unlabelled pixels included), registered
as one dataset name that every output task can judge; and model outputs near that ground truth
("sem_seg", "instances", "panoptic_seg" as the meta-architecture returns them), drawn from a
seed per image so that two evaluators get the very same outputs.

    spec = SyntheticSpec(num_images=2000, height=480, width=640, segments=20)
    name = register_synthetic_set(spec, root)          # writes it once under root
    inputs, outputs = synthetic_outputs(spec, name, index)
    results = run_evaluators({"stock": SemSegEvaluator(name, ...), "fast": ...}, pairs)
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances
from PIL import Image

from ..data.datasets.coco_formats import mask_to_annotation, panoptic_segment_id

__all__ = ["SyntheticSpec", "register_synthetic_set", "synthetic_outputs", "outputs_near",
           "run_evaluators", "metric_differences", "THING_CLASSES", "STUFF_CLASSES"]

THING_CLASSES = [f"thing{i}" for i in range(8)]
STUFF_CLASSES = [f"stuff{i}" for i in range(4)]
IGNORE_LABEL = 255
_MARKER = "synthetic.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: ``segments`` thing segments per image (all visible) plus stuff, and
    ``detections`` predicted instances per image (as a model's top-k: most of them poor), with
    ``things`` + ``stuff`` classes (8 + 4 by default; COCO panoptic has 80 + 53)."""

    num_images: int = 2000
    height: int = 480
    width: int = 640
    segments: int = 20
    detections: int = 100
    seed: int = 0
    things: int = len(THING_CLASSES)
    stuff: int = len(STUFF_CLASSES)

    @property
    def name(self) -> str:
        classes = "" if (self.things, self.stuff) == (len(THING_CLASSES), len(STUFF_CLASSES)) \
            else f"_c{self.things}+{self.stuff}"
        return f"synthetic_eval_{self.num_images}x{self.height}x{self.width}_s{self.segments}{classes}_seed{self.seed}"

    @property
    def classes(self) -> List[str]:
        """Thing classes first, then stuff."""
        return [f"thing{i}" for i in range(self.things)] + [f"stuff{i}" for i in range(self.stuff)]


def _metadata(spec: SyntheticSpec) -> Dict[str, Any]:
    classes = spec.classes
    return {
        "thing_classes": classes[:spec.things],
        "stuff_classes": classes,  # every class: the semantic evaluator judges all of them
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(spec.things)},
        "stuff_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
        "ignore_label": IGNORE_LABEL,
    }


def _ellipse(shape: Tuple[int, int], center: Tuple[int, int], axes: Tuple[int, int], angle: float) -> np.ndarray:
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.ellipse(canvas, center, axes, angle, 0, 360, 1, -1, cv2.LINE_8)
    return canvas.astype(bool)


def _scene(spec: SyntheticSpec, index: int) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """(H, W) int32 ground-truth segment ids (0: unlabelled) and the segments
    [{"id", "class" (contiguous), "iscrowd"}]."""
    rng = np.random.default_rng([spec.seed, index])
    h, w = spec.height, spec.width
    ids = np.zeros((h, w), dtype=np.int32)
    segments: List[Dict[str, Any]] = []
    # stuff: horizontal bands of random classes (a class may come twice: one segment)
    cuts = np.sort(rng.integers(h // 8, h - h // 8, 3))
    band_classes = rng.integers(spec.things, spec.things + spec.stuff, 4)
    stuff_ids: Dict[int, int] = {}
    for top, bottom, cls in zip([0, *cuts], [*cuts, h], band_classes):
        cls = int(cls)
        if cls not in stuff_ids:
            stuff_ids[cls] = panoptic_segment_id(cls, 1)
            segments.append({"id": stuff_ids[cls], "class": cls, "iscrowd": 0})
        ids[top:bottom] = stuff_ids[cls]
    # things: one per cell of a grid (each stays visible), crowds now and then
    cols = int(np.ceil(np.sqrt(spec.segments * w / h)))
    rows = int(np.ceil(spec.segments / cols))
    ch, cw = h / rows, w / cols
    count = {c: 0 for c in range(spec.things + spec.stuff)}
    for k in range(spec.segments):
        r, c = divmod(k, cols)
        cls = int(rng.integers(spec.things))
        count[cls] += 1
        center = (int((c + rng.uniform(0.35, 0.65)) * cw), int((r + rng.uniform(0.35, 0.65)) * ch))
        axes = (max(2, int(rng.uniform(0.2, 0.45) * cw)), max(2, int(rng.uniform(0.2, 0.45) * ch)))
        mask = _ellipse((h, w), center, axes, float(rng.uniform(0, 180)))
        if not mask.any():
            continue
        segment_id = panoptic_segment_id(cls, count[cls])
        ids[mask] = segment_id
        segments.append({"id": segment_id, "class": cls, "iscrowd": int(rng.random() < 0.03)})
    if rng.random() < 0.5:  # an unlabelled patch
        y, x = int(rng.integers(0, h - h // 8)), int(rng.integers(0, w - w // 8))
        ids[y:y + h // 10, x:x + w // 10] = 0
    present = set(np.unique(ids).tolist())
    return ids, [s for s in segments if s["id"] in present]


def _write_image(spec: SyntheticSpec, folder: str, index: int) -> Tuple[Dict, Dict, List[Dict]]:
    from panopticapi.utils import id2rgb

    ids, segments = _scene(spec, index)
    image_id = index + 1
    file_name = f"{image_id:06d}.png"
    sem = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
    segments_info, instances = [], []
    for s in segments:
        mask = ids == s["id"]
        sem[mask] = s["class"]
        ann = mask_to_annotation(mask)
        segments_info.append({"id": s["id"], "category_id": s["class"] + 1, "iscrowd": s["iscrowd"],
                              "area": ann["area"], "bbox": ann["bbox"]})
        if s["class"] < spec.things:
            instances.append({"image_id": image_id, "category_id": s["class"] + 1,
                              "iscrowd": s["iscrowd"], **ann})
    Image.fromarray(id2rgb(ids)).save(os.path.join(folder, "panoptic", file_name), compress_level=1)
    Image.fromarray(sem).save(os.path.join(folder, "sem_seg", file_name), compress_level=1)
    image = {"id": image_id, "file_name": file_name, "height": spec.height, "width": spec.width}
    return image, {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}, instances


def _categories(spec: SyntheticSpec, things_only: bool) -> List[Dict[str, Any]]:
    cats = [{"id": i + 1, "name": n, "isthing": int(i < spec.things)} for i, n in enumerate(spec.classes)]
    return cats[:spec.things] if things_only else cats


def _write_set(spec: SyntheticSpec, folder: str) -> None:
    marker = os.path.join(folder, _MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == asdict(spec):
                return
    for sub in ("panoptic", "sem_seg"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    images, panoptic, instances = [], [], []
    for index in range(spec.num_images):
        image, pan, inst = _write_image(spec, folder, index)
        images.append(image)
        panoptic.append(pan)
        instances.extend(inst)
    for i, ann in enumerate(instances):
        ann["id"] = i + 1
    for file_name, anns, things_only in (("panoptic.json", panoptic, False), ("instances.json", instances, True)):
        with open(os.path.join(folder, file_name), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": _categories(spec, things_only)}, f)
    with open(marker, "w") as f:
        json.dump(asdict(spec), f)


def register_synthetic_set(spec: SyntheticSpec, root: str) -> str:
    """Write the set under ``root`` (once per spec) and register it; returns its dataset name."""
    folder = os.path.join(root, spec.name)
    _write_set(spec, folder)
    name = spec.name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load() -> List[Dict[str, Any]]:
        return [{"file_name": os.path.join(folder, "images", f"{i + 1:06d}.png"), "image_id": i + 1,
                 "height": spec.height, "width": spec.width,
                 "sem_seg_file_name": os.path.join(folder, "sem_seg", f"{i + 1:06d}.png")}
                for i in range(spec.num_images)]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=os.path.join(folder, "instances.json"), panoptic_json=os.path.join(folder, "panoptic.json"),
        panoptic_root=os.path.join(folder, "panoptic"), sem_seg_root=os.path.join(folder, "sem_seg"),
        evaluator_type="synthetic", **_metadata(spec))
    return name


def outputs_near(ids: np.ndarray, segments: List[Dict[str, Any]], num_things: int, num_classes: int,
                 rng: np.random.Generator, detections: int = 0) -> Dict[str, Any]:
    """Model outputs near a ground truth: things shifted by a few pixels, some missed, some of
    the wrong class, a few false positives, stuff borders moved; instance output padded with
    small low-score instances to ``detections`` (a model's top-k keeps that many).

    Args:
        ids: (H, W) ground-truth segment ids; segments: [{"id", "class" (contiguous)}].
    Returns:
        {"sem_seg": (K, H, W) float scores, "instances": Instances (pred_masks, pred_boxes,
        scores, pred_classes), "panoptic_seg": ((H, W) int32 ids, segments_info)}.
    """
    h, w = ids.shape
    classes = np.full(ids.shape, -1, dtype=np.int64)  # the predicted class of every pixel
    shift = int(rng.integers(-h // 20, h // 20 + 1))
    stuff = [s for s in segments if s["class"] >= num_things]
    for s in stuff:
        classes[np.roll(ids == s["id"], shift, axis=0)] = s["class"]
    classes[classes < 0] = stuff[0]["class"] if stuff else num_things
    owner = np.zeros(ids.shape, dtype=np.int32)  # predicted thing k + 1 at each pixel
    masks, labels = [], []
    things = [s for s in segments if s["class"] < num_things]
    for s in things:
        if rng.random() < 0.1:
            continue  # missed
        dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
        mask = np.roll(ids == s["id"], (dy, dx), axis=(0, 1))
        label = int(rng.integers(num_things)) if rng.random() < 0.1 else s["class"]
        masks.append(mask)
        labels.append(label)
    for _ in range(2):  # false positives
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        masks.append(_ellipse((h, w), center, (max(2, w // 30), max(2, h // 30)), 0.0))
        labels.append(int(rng.integers(num_things)))
    for k, (mask, label) in enumerate(zip(masks, labels)):
        owner[mask] = k + 1
        classes[mask] = label
    scores = rng.uniform(0.05, 1.0, len(masks))
    padding = []
    for _ in range(detections - len(masks)):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        padding.append(_ellipse((h, w), center, (max(2, w // 40), max(2, h // 40)), 0.0))
    scores = torch.from_numpy(np.concatenate([scores, rng.uniform(0.0, 0.05, len(padding))]).astype(np.float32))
    instance_labels = labels + [int(v) for v in rng.integers(num_things, size=len(padding))]
    mask_t = (torch.from_numpy(np.stack(masks + padding)) if masks or padding
              else torch.zeros((0, h, w), dtype=torch.bool))
    instances = Instances((h, w), pred_masks=mask_t, pred_boxes=BitMasks(mask_t).get_bounding_boxes(),
                          scores=scores, pred_classes=torch.tensor(instance_labels, dtype=torch.int64))
    sem_seg = torch.nn.functional.one_hot(torch.from_numpy(classes), num_classes).permute(2, 0, 1).float()
    pan = torch.zeros((h, w), dtype=torch.int32)
    segments_info: List[Dict[str, Any]] = []
    next_id = 1
    for s in stuff:
        region = torch.from_numpy((classes == s["class"]) & (owner == 0))
        if region.any():
            pan[region] = next_id
            segments_info.append({"id": next_id, "isthing": False, "category_id": s["class"]})
            next_id += 1
    for k, label in enumerate(labels):
        region = torch.from_numpy(owner == k + 1)
        if region.any():
            pan[region] = next_id
            segments_info.append({"id": next_id, "isthing": True, "category_id": label})
            next_id += 1
    return {"sem_seg": sem_seg, "instances": instances, "panoptic_seg": (pan, segments_info)}


def synthetic_outputs(spec: SyntheticSpec, name: str, index: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The evaluator input (the dataset dict) and model output of image ``index`` of a registered set."""
    ids, segments = _scene(spec, index)
    outputs = outputs_near(ids, segments, spec.things, spec.things + spec.stuff,
                           np.random.default_rng([spec.seed, index, 1]), spec.detections)
    folder = os.path.dirname(MetadataCatalog.get(name).panoptic_json)
    inputs = {"file_name": os.path.join(folder, "images", f"{index + 1:06d}.png"), "image_id": index + 1,
              "height": spec.height, "width": spec.width}
    return inputs, outputs


def run_evaluators(evaluators: Dict[str, Any], pairs: Iterable[Tuple[Dict[str, Any], Dict[str, Any]]],
                   ) -> Dict[str, Tuple[Dict, float]]:
    """Each evaluator's results on the same (input, output) pairs, and the seconds its reset,
    process and evaluate calls took (producing the pairs is not timed, and happens once)."""
    seconds = dict.fromkeys(evaluators, 0.0)

    def timed(name: str, call, *args):
        start = time.perf_counter()
        value = call(*args)
        seconds[name] += time.perf_counter() - start
        return value

    for name, evaluator in evaluators.items():
        timed(name, evaluator.reset)
    for inputs, outputs in pairs:
        for name, evaluator in evaluators.items():
            timed(name, evaluator.process, [inputs], [outputs])
    return {name: (timed(name, evaluator.evaluate), seconds[name]) for name, evaluator in evaluators.items()}


def metric_differences(a: Dict[str, Dict[str, float]], b: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Per task, the largest absolute difference between two evaluators' metrics (NaN == NaN).

    Raises:
        KeyError: when the two name different tasks or metrics.
    """
    if set(a) != set(b):
        raise KeyError(f"different tasks: {sorted(a)} vs {sorted(b)}")
    differences = {}
    for task in a:
        if set(a[task]) != set(b[task]):
            raise KeyError(f"{task}: different metrics: {sorted(set(a[task]) ^ set(b[task]))}")
        differences[task] = max(
            (0.0 if math.isnan(x) and math.isnan(b[task][k]) else abs(x - b[task][k])
             for k, x in a[task].items()), default=0.0)
    return differences
