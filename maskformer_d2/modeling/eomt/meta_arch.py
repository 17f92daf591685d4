"""EoMT (Kerssies et al., CVPR 2025, "Your ViT is Secretly an Image Segmentation Model").

A plain ViT segments by itself: learned queries join the patch tokens before its last
``num_blocks`` blocks, and a light head (:mod:`.head`) turns the final query and patch tokens into
class and mask logits. In training the model also predicts before each of those blocks, masks
that block's attention with the prediction (annealed away, :mod:`.mask_annealing`) and is
supervised on every prediction with Mask2Former's point-sampled loss.

It is a :class:`~maskformer_d2.modeling.meta_arch.MaskFormer` in everything around the network:
targets, output tasks (semantic / instance / panoptic post-processing), export contract
(``network(images) -> {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4)}``); it
differs in the fixed input size (images are padded with black to ``MODEL.EOMT.IMG_SIZE``, then
normalised, as the official code pads them) and in the optional sliding-window semantic inference.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ...data.metadata import thing_ids_from_metadata
from ...errors import CheckpointMismatchError
from ...inference.postprocessing import InferenceOptions, semantic_inference
from ...inference.precision import resolve_precision
from ...inference.tasks import enabled_tasks
from ..backbone.eomt_vit import EoMTViT
from ..criterion import SetCriterion, build_weight_dict
from ..matcher import HungarianMatcher
from ..meta_arch import MaskFormer
from ..point_sampling import PointSampling
from ..recipe import RECIPES
from .dinov3_weights import add_delta_weights, delta_base, read_dinov3
from .head import EoMTHead
from .mask_annealing import MaskAnnealing, query_attention_mask
from .official_keys import is_official_eomt_state_dict, rename_official_eomt_keys
from .sliding_window import merge_window_scores, window_spans

__all__ = ["EoMT"]


@META_ARCH_REGISTRY.register()
class EoMT(MaskFormer):
    """Encoder-only Mask Transformer (see the module docstring)."""

    RECIPE = "mask2former"  # point-sampled BCE + dice, Mask2Former's panoptic / instance rules
    EXPORT_FIXED_SIZE = True  # the position embeddings fix the input size

    @configurable
    def __init__(
        self,
        *,
        backbone: EoMTViT,
        sem_seg_head: EoMTHead,
        criterion: SetCriterion,
        num_blocks: int,
        mask_annealing: MaskAnnealing,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        tasks: Sequence[str] = ("semantic",),
        inference_options: Optional[InferenceOptions] = None,
        masked_attn_enabled: bool = True,
        sliding_window: bool = False,
        precision: str = "fp32",
        delta_weights: bool = False,
        backbone_weights: str = "",
    ):
        """
        Args:
            backbone: the ViT; inputs are padded to its ``img_size``.
            sem_seg_head: queries and the class / mask heads.
            criterion: loss of one prediction; its ``weight_dict`` has suffixes ``_0`` ..
                ``_{num_blocks - 1}`` for the predictions before the query blocks.
            num_blocks: the last ``num_blocks`` ViT blocks process the queries.
            mask_annealing: the probabilities of the per-block attention masks.
            pixel_mean, pixel_std: per-channel normalisation, in ``INPUT.FORMAT`` order.
            tasks, inference_options: as :class:`MaskFormer`.
            masked_attn_enabled: predict before each query block and mask its attention
                (False: one prediction, after the last block, and no mask).
            sliding_window: semantic output by sliding windows of ``img_size`` (see
                :mod:`.sliding_window`); only semantic output is possible then.
            precision: as :class:`MaskFormer`.
            delta_weights: official checkpoints hold deltas to the DINOv3 weights
                ``backbone_weights`` (a file), as the official DINOv3 models do.
        """
        depth = len(backbone.blocks)
        if not 0 < num_blocks <= depth:
            raise ValueError(f"MODEL.EOMT.NUM_BLOCKS={num_blocks}: must be in 1..{depth}, the "
                             "ViT's depth")
        if sliding_window and list(tasks) != ["semantic"]:
            raise ValueError("MODEL.EOMT.TEST.SLIDING_WINDOW gives semantic output only; turn "
                             "MODEL.MASK_FORMER.TEST.INSTANCE_ON / PANOPTIC_ON off")
        super().__init__(
            backbone=backbone, sem_seg_head=sem_seg_head, criterion=criterion,
            pixel_mean=pixel_mean, pixel_std=pixel_std, size_divisibility=max(backbone.img_size),
            tasks=tasks, inference_options=inference_options or InferenceOptions(), channels_last=False,
            precision=precision,
        )
        self.num_blocks = num_blocks
        self.mask_annealing = mask_annealing
        self.masked_attn_enabled = masked_attn_enabled
        self.sliding_window = sliding_window
        self.delta_weights = delta_weights
        self.backbone_weights = backbone_weights

    @classmethod
    def from_config(cls, cfg) -> dict:
        e, mf = cfg.MODEL.EOMT, cfg.MODEL.MASK_FORMER
        backbone = build_backbone(cfg)
        if not isinstance(backbone, EoMTViT):
            raise ValueError(f"MODEL.META_ARCHITECTURE EoMT needs MODEL.BACKBONE.NAME EoMTViT, not "
                             f"{cfg.MODEL.BACKBONE.NAME}")
        tasks = enabled_tasks(cfg)
        recipe = RECIPES[cls.RECIPE]
        num_aux = e.NUM_BLOCKS if e.MASKED_ATTN_ENABLED else 0
        anneal = e.ATTN_MASK_ANNEALING_ENABLED
        return {
            "backbone": backbone,
            "sem_seg_head": EoMTHead(backbone.embed_dim, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                                     mf.NUM_OBJECT_QUERIES, backbone.patch_size),
            "criterion": SetCriterion(
                num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                matcher=HungarianMatcher(cfg),
                weight_dict=build_weight_dict(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, num_aux),
                eos_coef=mf.NO_OBJECT_WEIGHT,
                point_sampling=PointSampling.from_config(cfg),
                mask_loss=recipe.mask_loss,
            ),
            "num_blocks": e.NUM_BLOCKS,
            "mask_annealing": MaskAnnealing(
                e.NUM_BLOCKS,
                e.ATTN_MASK_ANNEALING_START_STEPS if anneal else (),
                e.ATTN_MASK_ANNEALING_END_STEPS if anneal else (),
                e.ATTN_MASK_ANNEALING_POWER,
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "tasks": [t.name for t in tasks],
            "inference_options": InferenceOptions(
                thing_ids=thing_ids_from_metadata(
                    cfg.DATASETS.TRAIN, load_if_needed=any(t.needs_thing_classes for t in tasks)),
                object_mask_threshold=mf.TEST.OBJECT_MASK_THRESHOLD,
                overlap_threshold=mf.TEST.OVERLAP_THRESHOLD,
                detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                # the official evaluation resizes mask logits to the image first
                sem_seg_postprocess_before_inference=True,
                panoptic_segment_within_own_mask=recipe.panoptic_segment_within_own_mask,
                instance_things_only=mf.TEST.PANOPTIC_ON or not recipe.instance_things_only_with_panoptic,
            ),
            "masked_attn_enabled": e.MASKED_ATTN_ENABLED,
            "sliding_window": e.TEST.SLIDING_WINDOW,
            "precision": resolve_precision(cfg.TEST.PRECISION, torch.device(cfg.MODEL.DEVICE)),
            "delta_weights": e.DELTA_WEIGHTS,
            "backbone_weights": e.BACKBONE_WEIGHTS,
        }

    @property
    def fixed_input_size(self) -> Sequence[int]:
        """(H, W) every input is padded to (``MODEL.EOMT.IMG_SIZE``): the export's input size."""
        return tuple(self.backbone.img_size)

    # ------------------------------------------------------------------ input
    def padded_size(self, image: Tensor) -> Tuple[int, int]:
        return self.fixed_input_size  # every image: one batch

    def pad_and_normalize(self, images: Sequence[Tensor]) -> ImageList:
        """(3, h, w) images in ``INPUT.FORMAT`` -> an ImageList of (B, 3, H, W) normalised images,
        each padded at the bottom/right with black (0 before normalising) to ``img_size``."""
        height, width = self.backbone.img_size
        too_large = [tuple(x.shape[-2:]) for x in images if x.shape[-2] > height or x.shape[-1] > width]
        if too_large:
            raise ValueError(
                f"EoMT: an input of {too_large[0][0]}x{too_large[0][1]} exceeds MODEL.EOMT.IMG_SIZE "
                f"{height}x{width}; resize it in the mapper (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, "
                "INPUT.IMAGE_SIZE) or use MODEL.EOMT.TEST.SLIDING_WINDOW")
        batch = images[0].new_zeros((len(images), 3, height, width), dtype=torch.float32,
                                    device=self.device)
        for b, x in zip(batch, images):
            b[:, : x.shape[-2], : x.shape[-1]] = x
        batch = (batch - self.pixel_mean) / self.pixel_std
        return ImageList(batch, [tuple(x.shape[-2:]) for x in images])

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        return self.pad_and_normalize([x["image"].to(self.device) for x in batched_inputs])

    # ------------------------------------------------------------------ network
    def network(self, images: Tensor) -> Dict:
        """(B, 3, H, W) normalised images of ``img_size`` -> {"pred_logits": (B, Q, K+1),
        "pred_masks": (B, Q, H/4, W/4)} after the last block and, in training (or when a query
        block still masks), "aux_outputs": the predictions made before the query blocks, in
        block order."""
        vit, head = self.backbone, self.sem_seg_head
        rope = vit.position_embeddings(images)  # first: it draws random numbers in training
        x = vit.embed(images)
        first = len(vit.blocks) - self.num_blocks
        aux: List[Dict[str, Tensor]] = []
        probs = self.mask_annealing.probs.tolist()  # Python numbers: constants of a traced graph
        for i, block in enumerate(vit.blocks):
            if i == first:
                x = torch.cat([head.queries(x.shape[0]), x], dim=1)
            mask = None
            if i >= first and self.masked_attn_enabled:
                prob = probs[i - first]
                if self.training or prob > 0:  # a mask that is never kept needs no prediction
                    pred = self._predict(x)
                    aux.append(pred)
                    mask = query_attention_mask(pred["pred_masks"], x.shape[1], vit.num_prefix_tokens,
                                                vit.grid_size, prob)[:, None]
            x = vit.run_block(block, x, mask, rope)
        outputs = self._predict(x)
        if aux:
            outputs["aux_outputs"] = aux
        return outputs

    def _predict(self, tokens: Tensor) -> Dict[str, Tensor]:
        """Class and mask logits from the final norm of (B, Q + prefix + h*w, C) tokens."""
        tokens = self.backbone.norm(tokens)
        q = self.sem_seg_head.num_queries
        logits, masks = self.sem_seg_head(tokens[:, :q], self.backbone.patch_features(tokens))
        return {"pred_logits": logits, "pred_masks": masks}

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """As :meth:`MaskFormer.forward`; training also steps the mask annealing to the current
        iteration and supervises every prediction."""
        if not self.training and self.sliding_window:
            return self.sliding_window_inference(batched_inputs)
        if not self.training:
            return super().forward(batched_inputs)
        self._anneal()
        images = self.preprocess_image(batched_inputs)
        outputs = self.network(images.tensor)
        targets = self.prepare_targets(batched_inputs, images)
        return self.criterion.weighted(self.losses(outputs, targets))

    def _anneal(self) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:  # outside a detectron2 trainer: keep the current probabilities
            return
        if self.mask_annealing.scheduled:
            self.mask_annealing.step(storage.iter)
            for i, p in enumerate(self.mask_annealing.probs.tolist()):
                storage.put_scalar(f"attn_mask_prob_{i}", p, smoothing_hint=False)

    def losses(self, outputs: Dict, targets: List[Dict]) -> Dict[str, Tensor]:
        """Unweighted losses of every prediction: the ones before the query blocks get suffix
        ``_i`` (block order), the final one none. Predictions are matched and sampled one after
        the other in that order, as the official training draws its random points."""
        predictions = outputs.get("aux_outputs", []) + [
            {k: v for k, v in outputs.items() if k != "aux_outputs"}]
        losses = {}
        for i, prediction in enumerate(predictions):
            suffix = "" if i == len(predictions) - 1 else f"_{i}"
            losses.update({k + suffix: v for k, v in self.criterion(prediction, targets).items()})
        return losses

    # ------------------------------------------------------------------ inference
    def sliding_window_inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """{"sem_seg": (K, height, width)} per image from windows of ``img_size`` (see
        :mod:`.sliding_window`); the image's short side should be the window size."""
        window = min(self.backbone.img_size)
        crops, spans = [], []
        for x in batched_inputs:
            image = x["image"].to(self.device)
            spans.append(window_spans(*image.shape[-2:], window))
            crops += [image[:, top:bottom, left:right] for top, bottom, left, right in spans[-1]]
        outputs = self.run_network(self.pad_and_normalize(crops).tensor)
        size = self.backbone.img_size
        masks = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear", align_corners=False)
        results, j = [], 0
        for x, image_spans in zip(batched_inputs, spans):
            scores = []
            for top, bottom, left, right in image_spans:
                window_scores = semantic_inference(outputs["pred_logits"][j], masks[j])
                scores.append(window_scores[:, : bottom - top, : right - left])
                j += 1
            h, w = x["image"].shape[-2:]
            out = (x.get("height", h), x.get("width", w))
            results.append({"sem_seg": merge_window_scores(scores, image_spans, (h, w), out)})
        return results

    # ------------------------------------------------------------------ checkpoints
    def rename_checkpoint_keys(self, state_dict: Dict[str, object]) -> Dict[str, object]:
        """Official EoMT names (``network.*``) -> ours, with the DINOv3 weights added when they
        are deltas (``MODEL.EOMT.DELTA_WEIGHTS``); other state dicts unchanged."""
        if not is_official_eomt_state_dict(state_dict):
            return state_dict
        renamed = rename_official_eomt_keys(state_dict)
        if not self.delta_weights:
            return renamed
        if not self.backbone_weights:
            raise CheckpointMismatchError(
                "MODEL.EOMT.DELTA_WEIGHTS: the official checkpoint holds deltas to the DINOv3 weights; set "
                f"MODEL.EOMT.BACKBONE_WEIGHTS to the DINOv3 file of {self.backbone.name!r} (its model.safetensors), "
                "or MODEL.EOMT.DELTA_WEIGHTS False for a checkpoint of absolute weights")
        return add_delta_weights(renamed, delta_base(self, read_dinov3(self.backbone_weights, self.backbone)))

    def extra_repr(self) -> str:
        return (f"num_blocks={self.num_blocks}, masked_attn_enabled={self.masked_attn_enabled}, "
                f"sliding_window={self.sliding_window}")
