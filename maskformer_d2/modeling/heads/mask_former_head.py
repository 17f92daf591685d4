"""MaskFormer's sem-seg head: pixel decoder + transformer predictor."""
from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

from ..pixel_decoder import build_pixel_decoder
from ..transformer_decoder import build_transformer_predictor
from .legacy_keys import LegacyPixelDecoderKeys
from .predictor_input import decode_and_predict, predictor_in_channels

__all__ = ["MaskFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(LegacyPixelDecoderKeys):
    """Backbone features -> Q (class, mask) predictions.

    The pixel decoder turns the backbone features into per-pixel embeddings; the transformer
    predictor turns one feature map (a backbone feature or the pixel decoder's encoder output)
    into Q queries, each with class logits and a mask embedding dotted with the per-pixel
    embeddings.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        """
        Args:
            num_classes: K, the number of categories (without "no object").
            pixel_decoder: a module with ``forward_features(features) -> (mask_features,
                transformer_encoder_features or None)``.
            transformer_predictor: ``forward(x, mask_features) -> dict`` (see :meth:`forward`).
            transformer_in_feature: the predictor's input: a backbone feature name,
                "transformer_encoder" for the pixel decoder's encoder output or "pixel_embedding".
        """
        super().__init__()
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        in_channels = predictor_in_channels(in_feature, input_shape, head.CONVS_DIM, head.MASK_DIM)
        return {
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": build_transformer_predictor(
                cfg, in_channels, mask_classification=True
            ),
            "transformer_in_feature": in_feature,
        }

    def forward(self, features: Dict[str, Tensor]) -> Dict[str, object]:
        """
        Args:
            features: backbone features by name, e.g. "res2" (B, C2, H/4, W/4) ... "res5".

        Returns:
            {"pred_logits": (B, Q, K+1) class logits, "pred_masks": (B, Q, H/4, W/4) mask logits,
             "aux_outputs": (with deep supervision) a list, per earlier decoder layer in order,
             of {"pred_logits", "pred_masks"}}
        """
        return decode_and_predict(
            self.pixel_decoder, self.predictor, self.transformer_in_feature, features
        )
