"""The MaskFormer meta-architecture: wires backbone, sem-seg head, criterion and post-processing.

Training: images -> backbone -> head -> {pred_logits, pred_masks, aux_outputs} -> SetCriterion.
Inference: the same predictions -> semantic / panoptic / instance post-processing
(:mod:`maskformer_d2.inference`), each switched on by ``MODEL.MASK_FORMER.TEST.*_ON``.
"""
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, ImageList, Instances

from ..inference import instance_inference, panoptic_inference, semantic_inference
from .criterion import SetCriterion

__all__ = ["MaskFormer", "thing_ids_from_metadata"]


def thing_ids_from_metadata(dataset_names: Sequence[str]) -> Optional[Set[int]]:
    """Contiguous ids of "thing" classes of the first dataset, or None when it does not say.

    Like the official code, these are the values of ``thing_dataset_id_to_contiguous_id``.
    """
    if not dataset_names:
        return None
    meta = MetadataCatalog.get(dataset_names[0])
    mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
    return set(mapping.values()) if mapping is not None else None


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Mask classification for semantic, panoptic and instance segmentation."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        num_queries: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        semantic_on: bool = True,
        panoptic_on: bool = False,
        instance_on: bool = False,
        sem_seg_postprocess_before_inference: bool = False,
        object_mask_threshold: float = 0.0,
        overlap_threshold: float = 0.0,
        thing_ids: Optional[Set[int]] = None,
        detections_per_image: int = 100,
    ):
        """
        Args:
            backbone: a d2 backbone; its outputs feed ``sem_seg_head``.
            sem_seg_head: returns {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4),
                "aux_outputs": [...]} from the backbone features.
            criterion: the loss module; its ``weight_dict`` weights the returned losses.
            num_queries: Q, the number of object queries.
            pixel_mean, pixel_std: per-channel normalisation, in ``INPUT.FORMAT`` order.
            size_divisibility: images are padded to a multiple of it (<0: the backbone's).
            semantic_on, panoptic_on, instance_on: which outputs inference returns.
            sem_seg_postprocess_before_inference: resize mask logits to the output size before
                semantic inference (the official option; panoptic and instance always are).
            object_mask_threshold, overlap_threshold: the panoptic thresholds.
            thing_ids: contiguous ids of thing classes (panoptic and instance need them).
            detections_per_image: top-k of instance inference.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.thing_ids = thing_ids
        self.detections_per_image = detections_per_image
        if (panoptic_on or instance_on) and thing_ids is None:
            raise ValueError(
                "MaskFormer: panoptic/instance inference needs the thing classes, but the metadata "
                "of DATASETS.TRAIN[0] has no thing_dataset_id_to_contiguous_id; use a dataset that "
                "defines it or turn MODEL.MASK_FORMER.TEST.PANOPTIC_ON/INSTANCE_ON off"
            )

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        test = cfg.MODEL.MASK_FORMER.TEST
        thing_ids = thing_ids_from_metadata(cfg.DATASETS.TRAIN)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": SetCriterion(cfg),
            "num_queries": cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "sem_seg_postprocess_before_inference": test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "thing_ids": thing_ids,
            "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images to a common size divisible by ``size_divisibility``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: d2 dataset-mapper outputs; "image" (3, H, W) in ``INPUT.FORMAT``,
                optional "height"/"width" (output size), "instances" (gt_classes, gt_masks)
                in training.

        Returns:
            training: dict of weighted losses. Inference: one dict per image with any of
            "sem_seg" (K, height, width), "panoptic_seg" ((height, width) int32 ids, segments_info),
            "instances" (Instances at height×width).
        """
        images = self.preprocess_image(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            return self.criterion.weighted(self.criterion(outputs, targets))
        return self.inference(outputs, batched_inputs, images)

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Per image {"labels": (n,), "masks": (n, Hpad, Wpad)}, masks zero-padded to the batch size."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            if "instances" not in x:
                raise KeyError(
                    "MaskFormer training needs 'instances' (gt_classes, gt_masks) in every input; "
                    "is INPUT.DATASET_MAPPER_NAME a MaskFormer mapper?"
                )
            inst = x["instances"].to(self.device)
            masks = inst.gt_masks.tensor if isinstance(inst.gt_masks, BitMasks) else inst.gt_masks
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst.gt_classes, "masks": padded})
        return targets

    # ---------------------------------------------------------------- inference
    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Post-process the final-layer predictions of each image into the enabled outputs."""
        mask_pred = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        results = []
        for mask_cls, masks, x, image_size in zip(
            outputs["pred_logits"], mask_pred, batched_inputs, images.image_sizes
        ):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            results.append(self.inference_single(mask_cls, masks, image_size, height, width))
        return results

    def inference_single(
        self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, image_size: Tuple[int, int], height: int, width: int
    ) -> Dict:
        """
        Args:
            mask_cls: (Q, K+1) class logits. mask_pred: (Q, Hpad, Wpad) mask logits at padded size.
            image_size: the (h, w) of the image inside the padding; height, width: output size.
        """
        result: Dict = {}
        resized = None
        if self.sem_seg_postprocess_before_inference or self.panoptic_on or self.instance_on:
            resized = sem_seg_postprocess(mask_pred, image_size, height, width)
        if self.semantic_on:
            if self.sem_seg_postprocess_before_inference:
                result["sem_seg"] = semantic_inference(mask_cls, resized)
            else:
                result["sem_seg"] = sem_seg_postprocess(
                    semantic_inference(mask_cls, mask_pred), image_size, height, width
                )
        num_classes = mask_cls.shape[-1] - 1
        if self.panoptic_on:
            result["panoptic_seg"] = panoptic_inference(
                mask_cls, resized, num_classes, self.thing_ids,
                self.object_mask_threshold, self.overlap_threshold,
            )
        if self.instance_on:
            result["instances"] = instance_inference(
                mask_cls, resized, num_classes, self.detections_per_image, self.thing_ids
            )
        return result
