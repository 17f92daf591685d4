"""The paper's per-pixel classification baselines, as detectron2 ``SemanticSegmentor`` heads.

Both predict K-class logits for every pixel at stride 4 and train with a per-pixel cross-entropy:
``PerPixelBaselineHead`` with a 1x1 conv on the pixel decoder's embeddings,
``PerPixelBaselinePlusHead`` with MaskFormer's transformer predictor, one query per class, whose
masks are the per-class logits (no mask classification).
"""
from typing import Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from ..pixel_decoder import build_pixel_decoder
from ..transformer_decoder import build_transformer_predictor
from .legacy_keys import LegacyPixelDecoderKeys
from .predictor_input import decode_and_predict, predictor_in_channels

__all__ = ["PerPixelBaselineHead", "PerPixelBaselinePlusHead"]


class _PerPixelHead(LegacyPixelDecoderKeys):
    """The SemanticSegmentor side of both baselines: upsampling, loss, train/eval outputs.

    Subclasses implement :meth:`layers`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """
        Args:
            num_classes: K.
            pixel_decoder: a pixel decoder (see ``PIXEL_DECODER_REGISTRY``).
            loss_weight: multiplier of the cross-entropy.
            ignore_value: label of unlabeled pixels, ignored by the loss.
        """
        super().__init__()
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.common_stride = 4
        self.pixel_decoder = pixel_decoder

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
        }

    def layers(self, features: Dict[str, Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """
        Returns:
            (B, K, H/4, W/4) class logits, and the same from every auxiliary layer (may be empty).
        """
        raise NotImplementedError

    def forward(
        self, features: Dict[str, Tensor], targets: Optional[Tensor] = None
    ) -> Tuple[Optional[Tensor], Dict[str, Tensor]]:
        """
        Args:
            features: backbone features by name.
            targets: (B, H, W) int64 labels (``ignore_value`` where unlabeled); training only.

        Returns:
            training: ``(None, {"loss_sem_seg": ..., "loss_sem_seg_i": ... per auxiliary layer})``;
            inference: ``((B, K, H, W) logits, {})``.
        """
        logits, aux_logits = self.layers(features)
        if not self.training:
            return self._upsample(logits), {}
        losses = {"loss_sem_seg": self.per_pixel_loss(logits, targets)}
        for i, aux in enumerate(aux_logits):
            losses[f"loss_sem_seg_{i}"] = self.per_pixel_loss(aux, targets)
        return None, losses

    def per_pixel_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Weighted mean cross-entropy of (B, K, H/4, W/4) logits, upsampled, vs (B, H, W) labels."""
        logits = self._upsample(logits.float())  # fp32: pytorch/pytorch#48163
        loss = F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)
        return loss * self.loss_weight

    def _upsample(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselineHead(_PerPixelHead):
    """Pixel decoder + a 1x1 conv ``predictor`` from its MASK_DIM embeddings to K class logits."""

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            kwargs: ``num_classes``, ``pixel_decoder`` (with a ``mask_dim`` attribute, its output
                channels), ``loss_weight``, ``ignore_value``: see :class:`_PerPixelHead`.
        """
        super().__init__(**kwargs)
        self.predictor = Conv2d(self.pixel_decoder.mask_dim, self.num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.predictor)

    def layers(self, features: Dict[str, Tensor]) -> Tuple[Tensor, List[Tensor]]:
        mask_features, _ = self.pixel_decoder.forward_features(features)
        return self.predictor(mask_features), []


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselinePlusHead(_PerPixelHead):
    """Pixel decoder + transformer predictor with one query per class and no class head: the
    "mask" of query k is the per-pixel logit of class k."""

    @configurable
    def __init__(
        self,
        *,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
        deep_supervision: bool,
        **kwargs,
    ):
        """
        Args:
            transformer_predictor: a predictor without mask classification and with
                ``num_classes`` queries.
            transformer_in_feature: the predictor's input (see :class:`MaskFormerHead`).
            deep_supervision: also compute the loss on every earlier decoder layer.
            kwargs: ``num_classes``, ``pixel_decoder``, ``loss_weight``, ``ignore_value``: see
                :class:`_PerPixelHead`.
        """
        super().__init__(**kwargs)
        num_classes = self.num_classes
        num_queries = getattr(transformer_predictor, "num_queries", num_classes)
        if num_queries != num_classes:
            raise ValueError(
                f"PerPixelBaselinePlusHead predicts one query per class: set "
                f"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES ({num_queries}) to "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES ({num_classes})"
            )
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.deep_supervision = deep_supervision

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        head = cfg.MODEL.SEM_SEG_HEAD
        in_channels = predictor_in_channels(in_feature, input_shape, head.CONVS_DIM, head.MASK_DIM)
        ret.update(
            transformer_predictor=build_transformer_predictor(
                cfg, in_channels, mask_classification=False
            ),
            transformer_in_feature=in_feature,
            deep_supervision=cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION,
        )
        return ret

    def layers(self, features: Dict[str, Tensor]) -> Tuple[Tensor, List[Tensor]]:
        out = decode_and_predict(
            self.pixel_decoder, self.predictor, self.transformer_in_feature, features
        )
        aux = out.get("aux_outputs", []) if self.deep_supervision else []
        return out["pred_masks"], [a["pred_masks"] for a in aux]
