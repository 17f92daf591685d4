"""Registration of the datasets of the official MaskFormer (and Mask2Former) under their names.

Datasets live under ``$DETECTRON2_DATASETS`` (default ``datasets``; layout in datasets/README.md).
Registration only records paths: a dataset is read the first time ``DatasetCatalog.get(name)`` is
called, and a missing folder then raises one FileNotFoundError line naming the path and the
``datasets/prepare_*.py`` script that creates it.

Registered here (detectron2 already registers ade20k_sem_seg_*, cityscapes_* and the COCO
instance / panoptic splits; we add colours to its ADE20K and thing ids to its Cityscapes instance
metadata):

=================================================  ========  ===================================
name                                               classes   prepared by (under datasets/)
=================================================  ========  ===================================
ade20k_full_sem_seg_{train,val}                    847       prepare_ade20k_full_sem_seg.py
coco_2017_{train,test}_stuff_10k_sem_seg           171       prepare_coco_stuff_10k_v1.0_sem_seg.py
mapillary_vistas_sem_seg_{train,val}               65        (none: the v1.2 download as is)
mapillary_vistas_panoptic_{train,val}              65        (none: the v1.2 download as is)
ade20k_panoptic_{train,val}                        150       prepare_ade20k_sem_seg.py +
                                                             prepare_ade20k_pan_seg.py
ade20k_instance_{train,val}                        100       prepare_ade20k_ins_seg.py
coco_2017_{train,val}_panoptic_with_sem_seg        133       prepare_coco_semantic_annos_from_panoptic_images.py
=================================================  ========  ===================================
"""
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from ...errors import first_line
from .builtin_meta import (
    ade20k_150_categories,
    ade20k_full_meta,
    ade20k_instance_meta,
    ade20k_panoptic_meta,
    cityscapes_instance_thing_ids,
    coco_panoptic_with_sem_seg_meta,
    coco_stuff_10k_meta,
    mapillary_vistas_meta,
    mapillary_vistas_panoptic_meta,
)
from .coco_formats import load_panoptic_json

__all__ = ["dataset_root", "lazy_loader", "register_all"]


def dataset_root() -> str:
    """``$DETECTRON2_DATASETS`` (default "datasets"), like detectron2's builtin datasets."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def lazy_loader(name: str, load: Callable[[], List[Dict[str, Any]]], required: Sequence[str],
                how: str) -> Callable[[], List[Dict[str, Any]]]:
    """Wrap a dataset loader so that bad data fails with one line naming the dataset and its files.

    A missing path says how to create it; an annotation file that cannot be parsed (empty,
    truncated, not JSON) or a dataset with no images raises ``ValueError`` naming the dataset
    and the paths it reads.

    Args:
        name: the dataset name, for the message.
        load: the real loader.
        required: paths that must exist before ``load`` can run.
        how: what creates them (a datasets/ script, a download).
    """

    def checked_load() -> List[Dict[str, Any]]:
        for path in required:
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"dataset {name}: {path} is missing; {how} (datasets are looked for under "
                    f"$DETECTRON2_DATASETS, see datasets/README.md)")
        try:
            dicts = load()
        except (ValueError, AssertionError, KeyError, IndexError) as e:  # json / d2 asserts
            raise ValueError(f"dataset {name}: cannot read {', '.join(required)}: "
                             f"{type(e).__name__}: {first_line(e)}") from e
        if not dicts:
            raise ValueError(f"dataset {name}: no images in {', '.join(required)}")
        return dicts

    return checked_load


def _script(*names: str) -> str:
    return "create it with " + " then ".join(f"`python datasets/{n}`" for n in names)


def _register_sem_seg(name: str, image_dir: str, gt_dir: str, gt_ext: str, how: str,
                      **metadata: Any) -> None:
    """A semantic segmentation dataset of images (.jpg) and label files with the same stems."""
    DatasetCatalog.register(name, lazy_loader(
        name, lambda: load_sem_seg(gt_dir, image_dir, gt_ext=gt_ext, image_ext="jpg"),
        [image_dir, gt_dir], how))
    MetadataCatalog.get(name).set(image_root=image_dir, sem_seg_root=gt_dir,
                                  evaluator_type="sem_seg", **metadata)


def register_ade20k_full(root: str) -> None:
    base = os.path.join(root, "ADE20K_2021_17_01")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        _register_sem_seg(
            f"ade20k_full_sem_seg_{split}", os.path.join(base, "images_detectron2", dirname),
            os.path.join(base, "annotations_detectron2", dirname), "tif",
            _script("prepare_ade20k_full_sem_seg.py"),
            ignore_label=65535, **ade20k_full_meta())  # labels are 16-bit TIFFs


def register_coco_stuff_10k(root: str) -> None:
    base = os.path.join(root, "coco", "coco_stuff_10k")
    for split in ("train", "test"):
        _register_sem_seg(
            f"coco_2017_{split}_stuff_10k_sem_seg", os.path.join(base, "images_detectron2", split),
            os.path.join(base, "annotations_detectron2", split), "png",
            _script("prepare_coco_stuff_10k_v1.0_sem_seg.py"),
            ignore_label=255, **coco_stuff_10k_meta())


_MAPILLARY_HOW = "extract the Mapillary Vistas v1.2 download there (no script)"


def register_mapillary_vistas(root: str) -> None:
    base = os.path.join(root, "mapillary_vistas")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        _register_sem_seg(
            f"mapillary_vistas_sem_seg_{split}", os.path.join(base, dirname, "images"),
            os.path.join(base, dirname, "labels"), "png", _MAPILLARY_HOW,
            ignore_label=65, **mapillary_vistas_meta())  # Mapillary's "unlabeled" is 65


def _register_panoptic(name: str, meta: Dict[str, Any], how: str, *, image_root: str,
                       panoptic_root: str, panoptic_json: str, sem_seg_root: str,
                       json_file: Optional[str], evaluator_type: str,
                       ignore_label: int = 255) -> None:
    """A COCO-panoptic dataset with semantic PNGs (and, with ``json_file``, an instance json for
    instance evaluation)."""
    DatasetCatalog.register(name, lazy_loader(
        name, lambda: load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root,
                                         meta),
        [image_root, panoptic_json, panoptic_root, sem_seg_root], how))
    # a json_file is what makes the instance evaluator run on a dataset (maskformer_d2.inference.tasks)
    instances = {} if json_file is None else {"json_file": json_file}
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root, image_root=image_root, panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root, evaluator_type=evaluator_type,
        ignore_label=ignore_label, label_divisor=1000, **instances, **meta)


def register_mapillary_vistas_panoptic(root: str) -> None:
    """``mapillary_vistas_panoptic_{train,val}``: the v1.2 panoptic PNGs and json as downloaded,
    with the semantic label PNGs for semantic evaluation (no instance json: no instance AP)."""
    base = os.path.join(root, "mapillary_vistas")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        _register_panoptic(
            f"mapillary_vistas_panoptic_{split}", mapillary_vistas_panoptic_meta(), _MAPILLARY_HOW,
            image_root=os.path.join(base, dirname, "images"),
            panoptic_root=os.path.join(base, dirname, "panoptic"),
            panoptic_json=os.path.join(base, dirname, "panoptic", "panoptic_2018.json"),
            sem_seg_root=os.path.join(base, dirname, "labels"), json_file=None,
            evaluator_type="mapillary_vistas_panoptic_seg", ignore_label=65)


def register_ade20k_panoptic(root: str) -> None:
    base = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        _register_panoptic(
            f"ade20k_panoptic_{split}", ade20k_panoptic_meta(),
            _script("prepare_ade20k_sem_seg.py", "prepare_ade20k_pan_seg.py"),
            image_root=os.path.join(base, "images", dirname),
            panoptic_root=os.path.join(base, f"ade20k_panoptic_{split}"),
            panoptic_json=os.path.join(base, f"ade20k_panoptic_{split}.json"),
            sem_seg_root=os.path.join(base, "annotations_detectron2", dirname),
            json_file=os.path.join(base, f"ade20k_instance_{split}.json"),
            evaluator_type="ade20k_panoptic_seg")


def register_ade20k_instance(root: str) -> None:
    base = os.path.join(root, "ADEChallengeData2016")
    meta = ade20k_instance_meta()
    for split, dirname in [("train", "training"), ("val", "validation")]:
        name = f"ade20k_instance_{split}"
        image_dir = os.path.join(base, "images", dirname)
        json_file = os.path.join(base, f"ade20k_instance_{split}.json")
        DatasetCatalog.register(name, lazy_loader(
            name, lambda j=json_file, i=image_dir, n=name: load_coco_json(j, i, n),
            [image_dir, json_file], _script("prepare_ade20k_ins_seg.py")))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_dir, evaluator_type="coco", **meta)


def register_coco_panoptic_with_sem_seg(root: str) -> None:
    """``coco_2017_{train,val}_panoptic_with_sem_seg``: d2's COCO panoptic plus semantic PNGs."""
    base = os.path.join(root, "coco")
    for split in ("train", "val"):
        _register_panoptic(
            f"coco_2017_{split}_panoptic_with_sem_seg", coco_panoptic_with_sem_seg_meta(),
            _script("prepare_coco_semantic_annos_from_panoptic_images.py"),
            image_root=os.path.join(base, f"{split}2017"),
            panoptic_root=os.path.join(base, f"panoptic_{split}2017"),
            panoptic_json=os.path.join(base, "annotations", f"panoptic_{split}2017.json"),
            sem_seg_root=os.path.join(base, f"panoptic_semseg_{split}2017"),
            json_file=os.path.join(base, "annotations", f"instances_{split}2017.json"),
            evaluator_type="coco_panoptic_seg")


def _add_ade20k_colors() -> None:
    """detectron2's ade20k_sem_seg_* have names but no colours; the official code added them."""
    colors = [c["color"] for c in ade20k_150_categories()]
    for name in ("ade20k_sem_seg_train", "ade20k_sem_seg_val"):
        meta = MetadataCatalog.get(name)
        if not hasattr(meta, "stuff_colors"):
            meta.set(stuff_colors=colors[:])


def _add_cityscapes_instance_thing_ids() -> None:
    """detectron2's cityscapes_fine_instance_seg_* have no ``thing_dataset_id_to_contiguous_id``
    (and no json to fill it in from), which instance output reads for its thing classes."""
    for split in ("train", "val", "test"):
        meta = MetadataCatalog.get(f"cityscapes_fine_instance_seg_{split}")
        if not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            meta.set(thing_dataset_id_to_contiguous_id=cityscapes_instance_thing_ids(
                meta.thing_classes))


def register_all(root: str) -> None:
    """Register every dataset of this module under ``root`` (called once at import)."""
    register_ade20k_full(root)
    register_coco_stuff_10k(root)
    register_mapillary_vistas(root)
    register_mapillary_vistas_panoptic(root)
    register_ade20k_panoptic(root)
    register_ade20k_instance(root)
    register_coco_panoptic_with_sem_seg(root)
    _add_ade20k_colors()
    _add_cityscapes_instance_thing_ids()
