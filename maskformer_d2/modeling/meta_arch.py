"""The MaskFormer meta-architecture: wires backbone, sem-seg head, criterion and post-processing.

Training: images -> backbone -> head -> {pred_logits, pred_masks, aux_outputs} -> SetCriterion.
Inference: the same predictions -> each enabled output task of :mod:`maskformer_d2.inference.tasks`
(semantic, instance, panoptic, ...), switched on by ``MODEL.MASK_FORMER.TEST.*_ON``.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_sem_seg_head
from detectron2.structures import BitMasks, ImageList
from torch import nn

from ..data.metadata import thing_ids_from_metadata
from ..inference.postprocessing import ImagePrediction, InferenceOptions
from ..inference.precision import autocast_for, resolve_precision
from ..inference.tasks import enabled_tasks, get_task
from .batchnorm_folding import enable_batchnorm_folding
from .criterion import SetCriterion
from .recipe import recipe_of

__all__ = ["MaskFormer"]


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
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        tasks: Sequence[str] = ("semantic",),
        inference_options: InferenceOptions = InferenceOptions(),
        channels_last: bool = False,
        precision: str = "fp32",
    ):
        """
        Args:
            backbone: a d2 backbone; its outputs feed ``sem_seg_head``.
            sem_seg_head: returns {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4),
                "aux_outputs": [...]} from the backbone features.
            criterion: the loss module; its ``weight_dict`` weights the returned losses.
            pixel_mean, pixel_std: per-channel normalisation, in ``INPUT.FORMAT`` order.
            size_divisibility: images are padded to a multiple of it (<0: the backbone's).
            tasks: names of the outputs inference returns (see :mod:`maskformer_d2.inference.tasks`).
            inference_options: thresholds, top-k and thing classes of post-processing.
            channels_last: in inference (eval mode), keep 4-d weights and images in
                channels-last (NHWC) memory layout, in which oneDNN's CPU convolutions need no
                layout reorders (the default on the CPU, see ``from_config``); training keeps the
                contiguous (NCHW) layout, whose convolution backward is the faster one on the CPU
                (docs/performance.md). :meth:`train` switches the weights between the two. Values
                are the same up to float rounding.
            precision: "fp32", or "bf16": inference runs the network under autocast in bfloat16
                where the device has bf16 units (:mod:`maskformer_d2.inference.precision`).
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.tasks = [get_task(name) for name in tasks]
        self.inference_options = inference_options
        needing = [t.name for t in self.tasks if t.needs_thing_classes]
        if needing and inference_options.thing_ids is None:
            raise ValueError(
                f"MaskFormer: {'/'.join(needing)} inference needs the thing classes, but the "
                "metadata of DATASETS.TRAIN[0] has no thing_dataset_id_to_contiguous_id; use a "
                "dataset that defines it or turn MODEL.MASK_FORMER.TEST."
                f"{'/'.join(get_task(n).config_flag for n in needing)} off"
            )
        predictor = getattr(sem_seg_head, "predictor", None)
        if hasattr(predictor, "aux_outputs_in_eval"):
            predictor.aux_outputs_in_eval = False  # inference reads the final prediction only
        enable_batchnorm_folding(self)  # inference only; training and state dict unchanged
        # inference may run the network elsewhere (e.g. maskformer_d2.deploy's ONNX Runtime
        # session): a callable with the contract of ``network``; pre- and post-processing stay
        self.runtime = None
        self.channels_last = channels_last
        self.train(self.training)
        self.precision = precision

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of 4-d weights and images: channels-last in CPU inference (see __init__)."""
        if self.channels_last and not self.training:
            return torch.channels_last
        return torch.contiguous_format

    def train(self, mode: bool = True) -> "MaskFormer":
        """Sets training or eval mode and lays the 4-d weights out for it (see ``channels_last``).
        The parameters stay the same objects (an optimiser's references hold), their values and
        state-dict names unchanged."""
        super().train(mode)
        if getattr(self, "channels_last", False):
            self.to(memory_format=self.memory_format)
        return self

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        test = cfg.MODEL.MASK_FORMER.TEST
        tasks = enabled_tasks(cfg)
        needs_things = any(t.needs_thing_classes for t in tasks)
        recipe = recipe_of(cfg)
        thing_ids = thing_ids_from_metadata(cfg.DATASETS.TRAIN, load_if_needed=needs_things)
        # Mask2Former resizes the masks to the output size first when panoptic or instance
        # output is on, and keeps only thing classes in instance output only with panoptic on
        resize_first = recipe.resize_masks_first_for_panoptic_or_instance and (
            test.PANOPTIC_ON or test.INSTANCE_ON)
        instance_things_only = test.PANOPTIC_ON or not recipe.instance_things_only_with_panoptic
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": SetCriterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "tasks": [t.name for t in tasks],
            "inference_options": InferenceOptions(
                thing_ids=thing_ids,
                object_mask_threshold=test.OBJECT_MASK_THRESHOLD,
                overlap_threshold=test.OVERLAP_THRESHOLD,
                detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                sem_seg_postprocess_before_inference=(
                    test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or resize_first),
                panoptic_segment_within_own_mask=recipe.panoptic_segment_within_own_mask,
                instance_things_only=instance_things_only,
            ),
            "channels_last": cfg.MODEL.DEVICE == "cpu",
            "precision": resolve_precision(cfg.TEST.PRECISION, torch.device(cfg.MODEL.DEVICE)),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images to a common size divisible by ``size_divisibility``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        images.tensor = images.tensor.contiguous(memory_format=self.memory_format)
        return images

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
        if not self.training:
            return self.batched_inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        outputs = self.network(images.tensor)
        targets = self.prepare_targets(batched_inputs, images)
        return self.criterion.weighted(self.criterion(outputs, targets))

    def padded_size(self, image: torch.Tensor) -> Tuple[int, int]:
        """(H, W) that a (3, h, w) ``image`` is padded to when it is batched alone."""
        d = max(self.size_divisibility, 1)
        return (-(-image.shape[-2] // d) * d, -(-image.shape[-1] // d) * d)

    def batched_inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """Inference of a batch, in groups of images that pad to the same size: each image's
        output is then its output in a batch of one (padding changes what the convolutions and
        attention near the border see)."""
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, x in enumerate(batched_inputs):
            groups.setdefault(self.padded_size(x["image"]), []).append(i)
        results: List[Dict] = [{} for _ in batched_inputs]
        for indices in groups.values():
            group = [batched_inputs[i] for i in indices]
            images = self.preprocess_image(group)
            for i, result in zip(indices, self.inference(self.run_network(images.tensor), group, images)):
                results[i] = result
        return results

    def run_network(self, images: torch.Tensor) -> Dict:
        """``network`` (or the exported ``runtime``) at inference: at ``precision``, with
        float32 predictions whatever it ran in."""
        if self.runtime is not None:
            return self.runtime(images)
        with autocast_for(self.precision, images.device):
            outputs = self.network(images)
        return {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}

    def network(self, images: torch.Tensor) -> Dict:
        """The part that is exported: (B, 3, H, W) normalised, padded images -> the head's
        outputs ("pred_logits" (B, Q, K+1), "pred_masks" (B, Q, H/4, W/4), ...)."""
        return self.sem_seg_head(self.backbone(images))

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
        padded_size = tuple(images.tensor.shape[-2:])
        results = []
        for mask_cls, masks, x, image_size in zip(
            outputs["pred_logits"], outputs["pred_masks"], batched_inputs, images.image_sizes
        ):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            prediction = ImagePrediction(mask_cls, masks, padded_size, image_size, height, width)
            results.append(
                {t.output_key: t.postprocess(prediction, self.inference_options) for t in self.tasks}
            )
        return results
