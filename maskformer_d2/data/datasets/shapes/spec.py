"""Shapes parameters: the class list and colours, the generation spec, and the metadata."""
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

from detectron2.config import CfgNode

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

# OpenCV hue units (0-179) either side of a class's hue centre; centres are 45 apart, so each
# family shares its outer quarters with its neighbours
HUE_SPREAD = 30


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
