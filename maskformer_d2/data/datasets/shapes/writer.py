"""Shapes writing: encoding scenes in the three formats, written atomically (a temporary folder
renamed into place) unless a complete copy with the same parameters exists."""
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from detectron2.config import CfgNode
from PIL import Image

from ....checkpoint.atomic import leftovers_of_dead_writers
from ..coco_formats import mask_to_annotation, panoptic_segment_id
from .render import render_scene
from .spec import (
    _SPLIT_SEED,
    CLASSES,
    COLORS,
    IGNORE_LABEL,
    MARKER,
    SPLITS,
    THING_CLASSES,
    ShapesSpec,
    shapes_spec,
)

logger = logging.getLogger(__package__)  # the package's logger, as before the split


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


# what prepare_shapes names its working folders: <dataset folder>.tmp-<pid>-<random> (.old- likewise)
_WORK_FOLDER = re.compile(r".+\.(?:tmp|old)-(\d+)-[^-]+")


def _remove_leftovers(root: str) -> None:
    """Remove the working folders of generations whose process was killed (a live one's stay)."""
    for name in leftovers_of_dead_writers(root, _WORK_FOLDER):
        if os.path.isdir(os.path.join(root, name)):
            logger.info(f"removing {os.path.join(root, name)}, left by an interrupted generation")
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


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
    _remove_leftovers(spec.root)
    tmp = tempfile.mkdtemp(prefix=f"{os.path.basename(spec.folder)}.tmp-{os.getpid()}-", dir=spec.root)
    stale = None
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        for split in SPLITS:
            _generate_split(spec, split, tmp, workers)
        _write_json(spec.params(), os.path.join(tmp, MARKER))  # last: marks the copy complete
        if os.path.exists(spec.folder):
            if _is_complete(spec):  # another process finished first
                return spec.folder
            stale = tempfile.mkdtemp(prefix=f"{os.path.basename(spec.folder)}.old-{os.getpid()}-", dir=spec.root)
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
