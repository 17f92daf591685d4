"""The MaskFormer dataset mappers: one shared pipeline, three sources of segments.

A mapper reads the image and its labels, applies the augmentations of
:func:`~maskformer_d2.data.mappers.augmentation.build_augmentations` to both, turns the
labels into one binary mask per segment, and pads image and targets. It returns a detectron2-style
dict::

    {"image": uint8 (3, H, W) in INPUT.FORMAT,
     "sem_seg": int64 (H, W) (semantic and panoptic datasets; ignore_label where unlabeled/padded),
     "instances": Instances(gt_classes int64 (n,), gt_masks bool (n, H, W)),
     ...every other key of the dataset dict ("file_name", "image_id", "height", "width", ...)}

At test time (``is_train=False``) only the resized "image" is added and no label file is read,
like detectron2's ``DatasetMapper``.

Subclasses only say where the segments come from (``_read_labels`` + ``_targets``) and which
augmentation recipe they use (``augmentation_style``).
"""
import copy
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ...errors import ImageReadError
from ..io import read_image
from ..metadata import train_ignore_label
from .augmentation import build_augmentations
from .build import DATASET_MAPPER_REGISTRY
from .targets import (
    check_labels,
    drop_empty,
    pad_to,
    padded_size,
    panoptic_masks,
    panoptic_to_semantic,
    semantic_masks,
    stack_masks,
)

__all__ = [
    "MaskFormerDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "DETRPanopticDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "COCOInstanceLSJDatasetMapper",
]

logger = logging.getLogger(__name__)

IMAGE_PAD_VALUE = 128  # what the official mappers pad images with
ON_BAD_IMAGE_CHOICES = ("error", "skip")
_LABEL_FILE_KEYS = ("sem_seg_file_name", "pan_seg_file_name", "annotations")


class MaskFormerDatasetMapper:
    """Shared pipeline of all MaskFormer mappers (see the module docstring). Not used directly."""

    augmentation_style = "maskformer"

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Any],
        image_format: str,
        ignore_label: int = 255,
        size_divisibility: int = -1,
        fixed_size: Optional[Tuple[int, int]] = None,
        num_classes: Optional[int] = None,
        on_bad_image: str = "error",
    ):
        """
        Args:
            is_train: training (targets built) or test (image only) mode.
            augmentations: augmentations / transforms applied to the image and its labels.
            image_format: format of "image", for :func:`detection_utils.read_image` ("RGB", "BGR").
            ignore_label: label of unlabeled pixels; padding of "sem_seg" uses it too.
            size_divisibility: pad image and targets to a multiple of this (<= 0: no padding).
            fixed_size: pad image and targets to exactly this (H, W) instead (LSJ).
            num_classes: K; labels outside [0, K) other than ``ignore_label`` raise ValueError.
                None disables the check.
            on_bad_image: "error" raises on an unreadable image/label file; "skip" logs it and
                returns None, which detectron2's training loader (``MapDataset``) answers by
                trying another image. Test-time mappers always raise.
        """
        if on_bad_image not in ON_BAD_IMAGE_CHOICES:
            raise ValueError(
                f"INPUT.ON_BAD_IMAGE is {on_bad_image!r}; use one of {ON_BAD_IMAGE_CHOICES}")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.fixed_size = tuple(fixed_size) if fixed_size is not None else None
        self.num_classes = num_classes
        self.on_bad_image = on_bad_image
        self.num_skipped = 0
        mode = "training" if is_train else "inference"
        logger.info(f"[{type(self).__name__}] augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        lsj = cls.augmentation_style == "lsj"
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train, cls.augmentation_style),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": train_ignore_label(cfg),
            "size_divisibility": -1 if lsj else cfg.INPUT.SIZE_DIVISIBILITY,
            "fixed_size": (cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE) if lsj else None,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "on_bad_image": cfg.INPUT.ON_BAD_IMAGE,
        }

    # ---- what subclasses define
    def _read_labels(self, dataset_dict: Dict[str, Any]) -> Dict[str, np.ndarray]:
        """Read and check the label files of one image, before augmentation.

        Returns:
            {"sem_seg": (H, W) float64} when a semantic map goes through the augmentations, plus
            any other array ``_targets`` needs.
        """
        raise NotImplementedError

    def _targets(self, dataset_dict: Dict[str, Any], labels: Dict[str, np.ndarray],
                 aug_input: T.AugInput, transforms: T.TransformList
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The segments of the augmented image: classes (n,) int64 and masks (n, H, W) bool."""
        raise NotImplementedError

    # ---- helpers of subclasses
    def _require(self, dataset_dict: Dict[str, Any], key: str, kind: str) -> Any:
        """``dataset_dict[key]``, or a ValueError saying which kind of dataset the mapper needs."""
        if dataset_dict.get(key) is None:
            raise ValueError(
                f"{dataset_dict['file_name']}: no {key!r} in its dataset dict; "
                f"{type(self).__name__} needs a {kind} dataset (check INPUT.DATASET_MAPPER_NAME)")
        return dataset_dict[key]

    def _read_sem_seg(self, path: str) -> np.ndarray:
        """A semantic label file as (H, W) float64, its labels checked."""
        # float64: detectron2's resize has no uint16 kernel (ADE20K-full labels are 16-bit)
        sem_seg = read_image(path, None, "semantic label").astype(np.float64)
        check_labels(np.unique(sem_seg), self.num_classes, self.ignore_label, path)
        return sem_seg

    # ---- shared pipeline
    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Map one dataset dict (detectron2 format) to model inputs; None when skipped."""
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        try:
            image = read_image(dataset_dict["file_name"], self.image_format)
            labels = self._read_labels(dataset_dict) if self.is_train else {}
        except ImageReadError as e:
            if self.on_bad_image == "skip" and self.is_train:
                self.num_skipped += 1
                logger.warning(f"{e} -- skipped ({self.num_skipped} skipped in this process)")
                return None
            raise ImageReadError(
                f"{e}; re-create or remove it (see datasets/README.md), or set INPUT.ON_BAD_IMAGE "
                "skip to skip such images in training") from None
        utils.check_image_size(dataset_dict, image)

        aug_input = T.AugInput(image, sem_seg=labels.get("sem_seg"))
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        height, width = image.shape[:2]
        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            for key in _LABEL_FILE_KEYS:
                dataset_dict.pop(key, None)
            dataset_dict["image"] = image_t
            return dataset_dict

        classes, masks = drop_empty(*self._targets(dataset_dict, labels, aug_input, transforms))
        for key in _LABEL_FILE_KEYS:
            dataset_dict.pop(key, None)

        size = padded_size(height, width, self.size_divisibility, self.fixed_size)
        dataset_dict["image"] = pad_to(image_t, size, IMAGE_PAD_VALUE)
        if aug_input.sem_seg is not None:
            sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
            dataset_dict["sem_seg"] = pad_to(sem_seg, size, self.ignore_label)
        instances = Instances(size)
        instances.gt_classes = classes
        instances.gt_masks = pad_to(masks, size, 0)
        dataset_dict["instances"] = instances
        return dataset_dict


@DATASET_MAPPER_REGISTRY.register_as("mask_former_semantic")
class MaskFormerSemanticDatasetMapper(MaskFormerDatasetMapper):
    """Semantic segmentation: one target mask per class present ("sem_seg_file_name" labels)."""

    def _read_labels(self, dataset_dict):
        path = self._require(dataset_dict, "sem_seg_file_name", "semantic segmentation")
        return {"sem_seg": self._read_sem_seg(path)}

    def _targets(self, dataset_dict, labels, aug_input, transforms):
        return semantic_masks(aug_input.sem_seg, self.ignore_label)


@DATASET_MAPPER_REGISTRY.register_as("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerDatasetMapper):
    """Panoptic segmentation: one target mask per non-crowd segment of the COCO-panoptic PNG.

    "sem_seg" is the dataset's semantic map ("sem_seg_file_name") when it has one, else the one
    implied by the panoptic segments (so the category-area crop constraint always works).
    """

    def _read_labels(self, dataset_dict):
        from panopticapi.utils import rgb2id

        path = self._require(dataset_dict, "pan_seg_file_name", "panoptic segmentation")
        pan_rgb = read_image(path, "RGB", "panoptic label")
        segments = dataset_dict["segments_info"]
        check_labels([s["category_id"] for s in segments], self.num_classes, None, path,
                     "segment category_id")
        if dataset_dict.get("sem_seg_file_name") is not None:
            sem_seg = self._read_sem_seg(dataset_dict["sem_seg_file_name"])
        else:
            sem_seg = panoptic_to_semantic(
                rgb2id(pan_rgb), segments, self.ignore_label, dtype=np.float64)
        return {"sem_seg": sem_seg, "pan_rgb": pan_rgb}

    def _targets(self, dataset_dict, labels, aug_input, transforms):
        from panopticapi.utils import rgb2id

        # nearest-neighbour on the RGB encoding keeps ids exact; 0 (void) stays void
        pan_ids = rgb2id(transforms.apply_segmentation(labels["pan_rgb"]))
        return panoptic_masks(pan_ids, dataset_dict["segments_info"])


@DATASET_MAPPER_REGISTRY.register_as("mask_former_instance")
class MaskFormerInstanceDatasetMapper(MaskFormerDatasetMapper):
    """Instance segmentation: one target mask per non-crowd COCO annotation (things only).

    Polygons and RLE both become bit masks via detectron2's ``annotations_to_instances``.
    """

    augmentation_style = "instance"

    def _read_labels(self, dataset_dict):
        annos = self._require(dataset_dict, "annotations", "instance segmentation")
        check_labels([a["category_id"] for a in annos], self.num_classes, None,
                     dataset_dict["file_name"], "annotation category_id")
        if any("segmentation" not in a for a in annos):
            raise ValueError(
                f"{dataset_dict['file_name']}: an annotation has no 'segmentation' (polygons or "
                f"RLE); MaskFormer trains on masks")
        return {}

    def _targets(self, dataset_dict, labels, aug_input, transforms):
        height, width = aug_input.image.shape[:2]
        annos = []
        for obj in dataset_dict["annotations"]:
            if obj.get("iscrowd", 0):
                continue
            obj.pop("keypoints", None)
            annos.append(utils.transform_instance_annotations(obj, transforms, (height, width)))
        if not annos:
            return torch.zeros((0,), dtype=torch.int64), stack_masks([], height, width)
        instances = utils.annotations_to_instances(annos, (height, width), mask_format="bitmask")
        return instances.gt_classes, instances.gt_masks.tensor.bool()


@DATASET_MAPPER_REGISTRY.register_as("detr_panoptic")
class DETRPanopticDatasetMapper(MaskFormerPanopticDatasetMapper):
    """Panoptic targets with DETR's COCO augmentation (official name "detr_panoptic")."""

    augmentation_style = "detr"


@DATASET_MAPPER_REGISTRY.register_as("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper(MaskFormerPanopticDatasetMapper):
    """Panoptic targets with large-scale jitter to INPUT.IMAGE_SIZE (Mask2Former's COCO recipe)."""

    augmentation_style = "lsj"


@DATASET_MAPPER_REGISTRY.register_as("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper(MaskFormerInstanceDatasetMapper):
    """Instance targets with large-scale jitter to INPUT.IMAGE_SIZE (Mask2Former's COCO recipe)."""

    augmentation_style = "lsj"
