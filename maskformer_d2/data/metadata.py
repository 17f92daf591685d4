"""What the model, the mappers and the drawing read from the metadata of a config's datasets.

Dataset metadata is set where datasets are registered (:mod:`maskformer_d2.data.datasets`, or
detectron2's ``register_coco_*``); nothing else hard-codes class lists or labels.
"""
import logging
from typing import FrozenSet, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.colormap import colormap

__all__ = ["thing_ids_from_metadata", "train_ignore_label", "display_metadata"]

logger = logging.getLogger(__name__)


def thing_ids_from_metadata(dataset_names: Sequence[str], load_if_needed: bool = False
                            ) -> Optional[FrozenSet[int]]:
    """Contiguous ids of "thing" classes of the first dataset, or None when it does not say.

    Like the official code, these are the values of ``thing_dataset_id_to_contiguous_id``.

    Args:
        dataset_names: e.g. ``cfg.DATASETS.TRAIN``.
        load_if_needed: when the metadata of a COCO-format dataset (one with a ``json_file``)
            lacks the mapping, load the dataset once to fill it in: detectron2's
            ``register_coco_instances`` sets it only when the json is first read.
    """
    if not dataset_names:
        return None
    name = dataset_names[0]
    meta = MetadataCatalog.get(name)
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if mapping is None and load_if_needed and meta.get("json_file", None) and name in DatasetCatalog:
        DatasetCatalog.get(name)
        mapping = MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", None)
    return frozenset(mapping.values()) if mapping is not None else None


def train_ignore_label(cfg: CfgNode) -> int:
    """The ignore label of DATASETS.TRAIN[0], MODEL.SEM_SEG_HEAD.IGNORE_VALUE without one."""
    if len(cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        if hasattr(meta, "ignore_label"):
            return int(meta.ignore_label)
    return int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)


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
