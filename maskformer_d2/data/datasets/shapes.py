"""Shapes: a small synthetic dataset, in all three standard formats, to train and test on anywhere.

Each RGB image (default 128 x 128) shows textured *stuff* regions (wavy bands of "sky", "grass",
"wall") under overlapping *things* ("circle", "square", "triangle", "star": 2-6 per image, radius
10-22% of the image side, random rotation, later ones occluding earlier ones). A thing's colour is
drawn from its class's hue family, and neighbouring families overlap: colour narrows a thing down
to one or two classes, its outline decides (half of all hues are shared by two classes). Some
pixels are void: a checkered blob in some images and thing fragments too small to annotate.
Everything is drawn with seeded numpy + OpenCV, so the same parameters give the same bytes.

Generator history (the marker's ``generator_version``): 1 had hues independent of the class and
radii of 7-20%; with it the CPU quickstart recipe plateaued near mIoU 57 / mask AP 13 / PQ 50,
telling squares, triangles and stars apart barely better than chance after 10 CPU-minutes.

Contiguous class ids: things first, then stuff (detectron2's COCO convention, which its
COCOEvaluator needs: thing ids must be exactly ``0..T-1``)::

    0 circle  1 square  2 triangle  3 star  4 sky  5 grass  6 wall      (dataset id = id + 1)

The dataset is written once, under ``<root>/<size>px_<train>train_<val>val_seed<seed>/``::

    shapes.json                              marker: generation parameters and class list
    images/{train,val}/000001.png            RGB images
    sem_seg/{train,val}/000001.png           uint8 contiguous class per pixel, 255 = void
    panoptic/{train,val}/000001.png          COCO-panoptic RGB-encoded segment ids, 0 = void
    annotations/panoptic_{train,val}.json    COCO-panoptic json (all 7 categories)
    annotations/instances_{train,val}.json   COCO instance json (things only, RLE masks)

The semantic PNGs are the semantic-from-panoptic maps, so the three formats agree pixel for pixel.
Generation writes to a temporary folder renamed into place at the end (a killed run leaves no half
dataset), and is redone when the marker's parameters differ.

Registered names (generation happens on the first ``DatasetCatalog.get``, or ``prepare_shapes``):
``shapes_sem_seg_{train,val}``, ``shapes_instance_{train,val}``, ``shapes_panoptic_{train,val}``.
``shapes_panoptic_*`` carries the metadata of COCOPanopticEvaluator, SemSegEvaluator and
COCOEvaluator at once, and its dicts carry "segments_info" (contiguous ids), "sem_seg_file_name",
"pan_seg_file_name" and the instance "annotations", so one model can be trained with any of the
three mappers and evaluated by all three evaluators on ``shapes_panoptic_val``.
"""
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg
from PIL import Image

from .coco_formats import load_panoptic_json, mask_to_annotation, panoptic_segment_id

__all__ = [
    "THING_CLASSES",
    "STUFF_CLASSES",
    "CLASSES",
    "ShapesSpec",
    "default_shapes_root",
    "shapes_spec",
    "shapes_metadata",
    "render_scene",
    "prepare_shapes",
    "register_shapes",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2
THING_CLASSES = ["circle", "square", "triangle", "star"]
STUFF_CLASSES = ["sky", "grass", "wall"]
CLASSES = THING_CLASSES + STUFF_CLASSES
COLORS = [[220, 20, 60], [0, 0, 142], [250, 170, 30], [106, 0, 228],
          [70, 130, 180], [107, 142, 35], [102, 102, 156]]
IGNORE_LABEL = 255
SPLITS = ("train", "val")
_SPLIT_SEED = {"train": 0, "val": 1}
MARKER = "shapes.json"


# ----------------------------------------------------------------------------- parameters
def default_shapes_root() -> str:
    """``$MASKFORMER_D2_CACHE/shapes``, or ``~/.cache/maskformer_d2/shapes``."""
    cache = os.getenv("MASKFORMER_D2_CACHE")
    if cache:
        return os.path.join(os.path.expanduser(cache), "shapes")
    return os.path.join(os.path.expanduser("~"), ".cache", "maskformer_d2", "shapes")


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate and where (one folder per parameter set under ``root``)."""

    root: str
    num_train: int = 2000
    num_val: int = 200
    image_size: int = 128
    seed: int = 0

    @property
    def folder(self) -> str:
        return os.path.join(self.root, f"{self.image_size}px_{self.num_train}train_"
                                       f"{self.num_val}val_seed{self.seed}")

    def params(self) -> Dict[str, Any]:
        """What the marker file records; a mismatch means the folder must be regenerated."""
        return {"generator_version": GENERATOR_VERSION, "num_train": self.num_train,
                "num_val": self.num_val, "image_size": self.image_size, "seed": self.seed,
                "classes": CLASSES}

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]

    def paths(self, split: str, folder: Optional[str] = None) -> Dict[str, str]:
        f = folder or self.folder
        return {
            "image_root": os.path.join(f, "images", split),
            "sem_seg_root": os.path.join(f, "sem_seg", split),
            "panoptic_root": os.path.join(f, "panoptic", split),
            "panoptic_json": os.path.join(f, "annotations", f"panoptic_{split}.json"),
            "json_file": os.path.join(f, "annotations", f"instances_{split}.json"),
        }


def shapes_spec(cfg_or_root: Union[CfgNode, str, None] = None, **overrides: Any) -> ShapesSpec:
    """The :class:`ShapesSpec` of a config (DATASETS.SHAPES.*), a root folder, or the defaults;
    keyword arguments (num_train, num_val, image_size, seed) override either."""
    kw: Dict[str, Any] = {}
    root = None
    if isinstance(cfg_or_root, CfgNode):
        s = cfg_or_root.DATASETS.SHAPES
        root = s.ROOT or None
        kw = {"num_train": s.NUM_TRAIN, "num_val": s.NUM_VAL, "image_size": s.IMAGE_SIZE}
    elif cfg_or_root is not None:
        root = os.fspath(cfg_or_root)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ShapesSpec(root=os.path.expanduser(root or default_shapes_root()), **kw)


# ----------------------------------------------------------------------------- drawing
def _stuff_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S) contiguous stuff ids: 1-3 wavy bands, horizontal or (30%) vertical."""
    num_bands = int(rng.integers(1, 4))
    classes = rng.permutation(len(STUFF_CLASSES))[:num_bands] + len(THING_CLASSES)
    coord = np.arange(size, dtype=np.float32)
    layout = np.full((size, size), classes[0], dtype=np.uint8)
    cuts = np.sort(rng.uniform(0.2, 0.8, num_bands - 1)) * size
    for cls, cut in zip(classes[1:], cuts):
        amp, freq, phase = rng.uniform(0, 0.08 * size), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
        boundary = cut + amp * np.sin(2 * np.pi * freq * coord / size + phase)  # along x
        layout[coord[:, None] >= boundary[None, :]] = cls
    return layout.T.copy() if rng.random() < 0.3 else layout


def _noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _stuff_texture(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """(S, S, 3) float32 texture of one stuff class, with per-image colour jitter."""
    jitter = rng.uniform(-20, 20, 3).astype(np.float32)
    name = CLASSES[cls]
    if name == "sky":  # vertical gradient, little noise
        y = np.arange(size, dtype=np.float32)[:, None, None] / size
        tex = (np.array([90, 150, 230], np.float32) + jitter) * (1.15 - 0.35 * y)
        return tex + _noise(rng, (size, size, 3), 3)
    if name == "grass":  # noisy green with vertical streaks
        tex = np.array([60, 150, 50], np.float32) + jitter + _noise(rng, (size, size, 1), 14)
        return tex + _noise(rng, (1, size, 1), 16)
    # wall: bricks with light mortar lines
    tex = np.empty((size, size, 3), np.float32)
    tex[:] = np.array([150, 75, 55], np.float32) + jitter
    bh = max(4, size // 16)
    bw = 2 * bh
    rows, cols = np.mgrid[0:size, 0:size]
    mortar = (rows % bh == 0) | ((cols + (rows // bh % 2) * (bw // 2)) % bw == 0)
    tex[mortar] = [205, 200, 195]
    return tex + _noise(rng, (size, size, 3), 6)


def _thing_polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a square / triangle / star centred at (cx, cy) with radius r."""
    name = CLASSES[cls]
    if name == "square":
        theta = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif name == "triangle":
        theta = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    else:  # star
        theta = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def _thing_mask(cls: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.uint8)
    if CLASSES[cls] == "circle":
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, cv2.LINE_8)
    else:
        pts = np.round(_thing_polygon(cls, cx, cy, r, angle)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, cv2.LINE_8)
    return canvas.astype(bool)


# OpenCV hue units (0-179) either side of a class's hue centre; centres are 45 apart, so each
# family shares its outer quarters with its neighbours
HUE_SPREAD = 30


def _random_color(rng: np.random.Generator, cls: int) -> np.ndarray:
    """A saturated colour in the hue family of thing class ``cls`` (centres 45 units apart)."""
    hue = (cls * 180 // len(THING_CLASSES) + rng.integers(-HUE_SPREAD, HUE_SPREAD + 1)) % 180
    hsv = np.array([[[hue, rng.integers(150, 256), rng.integers(140, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def render_scene(rng: np.random.Generator, size: int = 128
                 ) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]], np.ndarray]:
    """Draw one image.

    Returns:
        image: (S, S, 3) uint8 RGB.
        segments: [(contiguous class id, (S, S) bool mask)], things (in drawing order) then stuff;
            masks are disjoint and non-empty.
        void: (S, S) bool, the pixels of no segment.
    """
    stuff = _stuff_layout(rng, size)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for cls in np.unique(stuff):
        sel = stuff == cls
        image[sel] = _stuff_texture(rng, int(cls), size)[sel]

    void = np.zeros((size, size), dtype=bool)
    if rng.random() < 0.3:  # a checkered blob nobody labelled
        blob = np.zeros((size, size), dtype=np.uint8)
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 32 + 1, size // 10 + 2, 2))
        cv2.ellipse(blob, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, cv2.LINE_8)
        void = blob.astype(bool)
        rows, cols = np.mgrid[0:size, 0:size]
        checker = ((rows // 3 + cols // 3) % 2).astype(bool)
        greys = rng.integers(40, 220, 2)
        image[void & checker] = greys[0]
        image[void & ~checker] = greys[1]

    owner = np.full((size, size), -1, dtype=np.int32)  # which thing shows at each pixel
    thing_classes = []
    for k in range(int(rng.integers(2, 7))):
        cls = int(rng.integers(len(THING_CLASSES)))
        r = rng.uniform(0.1, 0.22) * size
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        mask = _thing_mask(cls, cx, cy, r, rng.uniform(0, 2 * np.pi), size)
        color = _random_color(rng, cls)
        ys, xs = np.nonzero(mask)
        shade = 1.0 + 0.15 * (2 * xs.astype(np.float32) / size - 1)  # light from the right
        image[ys, xs] = color * shade[:, None] + _noise(rng, (len(ys), 3), 4)
        owner[mask] = k
        thing_classes.append(cls)

    min_area = max(8, (size * size) // 1024)
    segments: List[Tuple[int, np.ndarray]] = []
    for k, cls in enumerate(thing_classes):
        visible = owner == k
        if visible.sum() >= min_area:
            segments.append((cls, visible))
        else:  # too small to annotate: void
            void |= visible
    background = (owner < 0) & ~void
    for cls in np.unique(stuff):
        mask = background & (stuff == cls)
        if mask.any():
            segments.append((int(cls), mask))
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, segments, void


# ----------------------------------------------------------------------------- writing
def _encode_scene(segments: List[Tuple[int, np.ndarray]], size: int, image_id: int
                  ) -> Tuple[np.ndarray, np.ndarray, List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Semantic map, panoptic RGB, panoptic segments_info and instance annotations of a scene."""
    from panopticapi.utils import id2rgb

    sem = np.full((size, size), IGNORE_LABEL, dtype=np.uint8)
    pan = np.zeros((size, size), dtype=np.uint32)
    segments_info, instances = [], []
    count = {c: 0 for c in range(len(CLASSES))}
    for cls, mask in segments:
        count[cls] += 1
        segment_id = panoptic_segment_id(cls, count[cls])
        sem[mask] = cls
        pan[mask] = segment_id
        ann = mask_to_annotation(mask)
        segments_info.append({"id": segment_id, "category_id": cls + 1, "iscrowd": 0,
                              "area": ann["area"], "bbox": ann["bbox"]})
        if cls < len(THING_CLASSES):
            instances.append({"image_id": image_id, "category_id": cls + 1, "iscrowd": 0, **ann})
    return sem, id2rgb(pan), segments_info, instances


def _categories(things_only: bool) -> List[Dict[str, Any]]:
    cats = [{"id": i + 1, "name": name, "supercategory": "shape" if i < len(THING_CLASSES)
             else "background", "isthing": int(i < len(THING_CLASSES)), "color": COLORS[i]}
            for i, name in enumerate(CLASSES)]
    return cats[:len(THING_CLASSES)] if things_only else cats


def _write_json(obj: Any, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _write_images(spec: ShapesSpec, split: str, folder: str, start: int, stop: int
                  ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Draw and write images ``start..stop-1`` of a split; returns their json entries (image,
    panoptic annotation, instance annotations without "id")."""
    paths = spec.paths(split, folder)
    images, pan_anns, inst_anns = [], [], []
    size = spec.image_size
    for idx in range(start, stop):
        image_id = idx + 1
        rng = np.random.default_rng([spec.seed, _SPLIT_SEED[split], idx])  # per image: any order
        image, segments, _ = render_scene(rng, size)
        sem, pan_rgb, segments_info, instances = _encode_scene(segments, size, image_id)
        file_name = f"{image_id:06d}.png"
        for key, array in (("image_root", image), ("sem_seg_root", sem),
                           ("panoptic_root", pan_rgb)):
            Image.fromarray(array).save(os.path.join(paths[key], file_name), compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        pan_anns.append({"image_id": image_id, "file_name": file_name,
                         "segments_info": segments_info})
        inst_anns.extend(instances)
    return images, pan_anns, inst_anns


def _generate_split(spec: ShapesSpec, split: str, folder: str, workers: int = 1) -> None:
    paths = spec.paths(split, folder)
    for key in ("image_root", "sem_seg_root", "panoptic_root"):
        os.makedirs(paths[key], exist_ok=True)
    n = spec.num_images(split)
    bounds = np.linspace(0, n, max(1, min(workers, n // 64)) + 1).astype(int).tolist()
    jobs = [(spec, split, folder, start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
    if len(jobs) > 1:
        # fork: the workers inherit the imported modules instead of importing torch again
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            parts = pool.starmap(_write_images, jobs)
    else:
        parts = [_write_images(*job) for job in jobs]
    images = [x for part in parts for x in part[0]]
    pan_anns = [x for part in parts for x in part[1]]
    inst_anns = [x for part in parts for x in part[2]]
    for i, ann in enumerate(inst_anns):
        ann["id"] = i + 1
    info = {"description": f"maskformer_d2 shapes {split}", **spec.params()}
    _write_json({"info": info, "images": images, "annotations": pan_anns,
                 "categories": _categories(things_only=False)}, paths["panoptic_json"])
    _write_json({"info": info, "images": images, "annotations": inst_anns,
                 "categories": _categories(things_only=True)}, paths["json_file"])


def _is_complete(spec: ShapesSpec, folder: Optional[str] = None) -> bool:
    marker = os.path.join(folder or spec.folder, MARKER)
    try:
        with open(marker) as f:
            return json.load(f) == spec.params()
    except (OSError, ValueError):
        return False


def prepare_shapes(cfg_or_root: Union[CfgNode, str, None] = None, *,
                   workers: Optional[int] = None, **overrides: Any) -> str:
    """Generate the shapes dataset unless a complete copy with the same parameters exists.

    Args:
        cfg_or_root: a config (DATASETS.SHAPES.*), a root folder, or None for the defaults.
        workers: processes drawing images (default: up to 4, one per 64 images); the output
            does not depend on it.
        overrides: num_train, num_val, image_size, seed.
    Returns:
        the dataset folder.
    """
    spec = shapes_spec(cfg_or_root, **overrides)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if _is_complete(spec):
        return spec.folder
    os.makedirs(spec.root, exist_ok=True)
    start = time.perf_counter()
    logger.info(f"generating the shapes dataset ({spec.num_train} train + {spec.num_val} val "
                f"images of {spec.image_size}px) in {spec.folder} ...")
    tmp = tempfile.mkdtemp(prefix=os.path.basename(spec.folder) + ".tmp-", dir=spec.root)
    stale = None
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        for split in SPLITS:
            _generate_split(spec, split, tmp, workers)
        _write_json(spec.params(), os.path.join(tmp, MARKER))  # last: marks the copy complete
        if os.path.exists(spec.folder):
            if _is_complete(spec):  # another process finished first
                return spec.folder
            stale = tempfile.mkdtemp(prefix=os.path.basename(spec.folder) + ".old-", dir=spec.root)
            os.rename(spec.folder, os.path.join(stale, "data"))
        try:
            os.rename(tmp, spec.folder)
        except OSError:
            if not _is_complete(spec):
                raise
    finally:
        for path in (tmp, stale):
            if path is not None and os.path.exists(path):
                shutil.rmtree(path, ignore_errors=True)
    logger.info(f"shapes dataset ready in {time.perf_counter() - start:.1f}s: {spec.folder}")
    return spec.folder


# ----------------------------------------------------------------------------- registration
def shapes_metadata() -> Dict[str, Any]:
    """Class names, colours and id maps (things first; dataset id = contiguous id + 1)."""
    num_things = len(THING_CLASSES)
    return {
        "thing_classes": THING_CLASSES[:],
        "thing_colors": COLORS[:num_things],
        "stuff_classes": CLASSES[:],
        "stuff_colors": COLORS[:],
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(num_things)},
        # every class, so that the semantic evaluator can run on the panoptic split too
        "stuff_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CLASSES))},
        "ignore_label": IGNORE_LABEL,
    }


def _load_panoptic(spec: ShapesSpec, split: str, name: str) -> List[Dict[str, Any]]:
    prepare_shapes(spec.root, num_train=spec.num_train, num_val=spec.num_val,
                   image_size=spec.image_size, seed=spec.seed)
    p = spec.paths(split)
    dicts = load_panoptic_json(p["panoptic_json"], p["image_root"], p["panoptic_root"],
                               p["sem_seg_root"], shapes_metadata(), image_ext=".png")
    annotations = {d["image_id"]: d.get("annotations", [])
                   for d in load_coco_json(p["json_file"], p["image_root"], name)}
    for d in dicts:
        d["annotations"] = annotations[d["image_id"]]
    return dicts


def _load_instances(spec: ShapesSpec, split: str, name: str) -> List[Dict[str, Any]]:
    prepare_shapes(spec.root, num_train=spec.num_train, num_val=spec.num_val,
                   image_size=spec.image_size, seed=spec.seed)
    p = spec.paths(split)
    return load_coco_json(p["json_file"], p["image_root"], name)


def _load_semantic(spec: ShapesSpec, split: str) -> List[Dict[str, Any]]:
    prepare_shapes(spec.root, num_train=spec.num_train, num_val=spec.num_val,
                   image_size=spec.image_size, seed=spec.seed)
    p = spec.paths(split)
    return load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="png", image_ext="png")


def register_shapes(cfg_or_root: Union[CfgNode, str, None] = None, **overrides: Any) -> ShapesSpec:
    """(Re-)register the six shapes datasets for a config / root; generates nothing.

    Importing :mod:`maskformer_d2.data` registers them with the defaults; call this with the
    training config before building loaders so DATASETS.SHAPES.* apply. Returns the spec (its
    ``folder`` is where the data is, or will be).
    """
    spec = shapes_spec(cfg_or_root, **overrides)
    meta = shapes_metadata()
    things = {k: meta[k] for k in
              ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")}
    semantic = {k: meta[k] for k in
                ("stuff_classes", "stuff_colors", "stuff_dataset_id_to_contiguous_id",
                 "ignore_label")}
    for split in SPLITS:
        p = spec.paths(split)
        entries = {
            f"shapes_sem_seg_{split}": (
                lambda s=split: _load_semantic(spec, s),
                dict(image_root=p["image_root"], sem_seg_root=p["sem_seg_root"],
                     evaluator_type="sem_seg", **semantic)),
            f"shapes_instance_{split}": (
                lambda s=split, n=f"shapes_instance_{split}": _load_instances(spec, s, n),
                dict(image_root=p["image_root"], json_file=p["json_file"],
                     evaluator_type="coco", **things)),
            f"shapes_panoptic_{split}": (
                lambda s=split, n=f"shapes_panoptic_{split}": _load_panoptic(spec, s, n),
                dict(evaluator_type="coco_panoptic_seg", label_divisor=1000, **p, **meta)),
        }
        for name, (loader, metadata) in entries.items():
            if name in DatasetCatalog:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**metadata)
    return spec
