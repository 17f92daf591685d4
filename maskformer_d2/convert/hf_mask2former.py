"""Import Hugging Face ``transformers`` Mask2Former models (Swin or ResNet backbone) into maskformer_d2.

``Mask2FormerForUniversalSegmentation`` is the official Mask2Former: the multi-scale deformable
attention pixel decoder (``MSDeformAttnPixelDecoder``) and the masked-attention decoder
(``MultiScaleMaskedTransformerDecoder``); its weights map one-to-one onto the official names, which
are ours:

* :func:`convert_state_dict` renames (and, for the decoder's self-attention, concatenates) tensors;
* :func:`config_from_hf` builds the matching detectron2 config;
* :func:`import_hf_mask2former` does both for a model on disk / in the HF cache and writes
  ``model_final.safetensors`` and ``config.yaml`` (tools/convert-hf-mask2former-to-d2.py is its CLI).

The backbone rules, config checks, file writing and command line are those of the MaskFormer
importer (:mod:`.hf`). Conventions that differ from the official code and that the conversion absorbs:

* ``decoder_layers`` counts like the official ``DEC_LAYERS``: both build ``decoder_layers - 1``
  layers and make one more prediction from the learnable query features, so DEC_LAYERS = decoder_layers.
* HF splits the decoder self-attention's ``in_proj`` into ``q_proj/k_proj/v_proj`` (concatenated back
  in q, k, v order); its cross-attention is a packed ``nn.MultiheadAttention`` like the official one.
  Its Swin (transformers 5) splits ``attn.qkv`` likewise and no longer saves the
  ``relative_position_index`` buffers, which are regenerated from the window size.
* One HF decoder layer holds what the official code keeps in three lists: ``cross_attn`` and
  ``cross_attn_layer_norm`` -> ``transformer_cross_attention_layers.i`` (``multihead_attn``, ``norm``),
  ``self_attn`` and ``self_attn_layer_norm`` -> ``transformer_self_attention_layers.i``,
  ``fc1/fc2/final_layer_norm`` -> ``transformer_ffn_layers.i`` (``linear1/linear2/norm``); the order of
  computation is the same (cross-attention, self-attention, FFN). The deformable encoder layers'
  ``self_attn_layer_norm/fc1/fc2/final_layer_norm`` are ``norm1/linear1/linear2/norm2``.
* ``queries_features`` is the official ``query_feat`` (the decoder's initial content),
  ``queries_embedder`` is ``query_embed`` (the query positions); ``decoder.layernorm`` is
  ``decoder_norm``; ``mask_predictor.mask_embedder.i.0`` is ``mask_embed.layers.i``;
  ``class_predictor`` is ``class_embed``; ``mask_projection`` is the pixel decoder's ``mask_features``.
* Both list the pixel decoder's input projections coarsest level first (``input_projections.0``
  reads res5) and number the FPN convs from the finest (``adapter_1`` reads res2); HF wraps each FPN
  conv and its GroupNorm in a Sequential (``adapter_1.0``, ``adapter_1.1``), detectron2's Conv2d
  keeps the norm inside (``adapter_1``, ``adapter_1.norm``).
* HF takes ``pixel_values`` already normalised; see :mod:`.hf` for the PIXEL_MEAN/STD conversion.

At inference HF computes the official function: the same sine positions (normalised, 2*pi, eps
1e-6), level embeddings, deformable attention (the pure-PyTorch ``grid_sample`` path, bilinear,
zero padding, align_corners False, 4 points on each of the 3 levels), level order (coarsest first,
round-robin over 3 levels per decoder layer), attention masks (previous mask logits resized
bilinearly to the next level, sigmoid < 0.5 masked, a fully masked query attends everywhere),
FPN step and prediction heads, and its auxiliary predictions are the official ``aux_outputs``.
Differences are float rounding (tests/test_hf_import_mask2former.py). Where HF is *not* the
official model, in training only: ``config.dropout`` is also HF's decoder LayerDrop probability
(whole decoder layers skipped at random; the official decoder has no LayerDrop) and the dropout
of its decoder attention and FFN layers (the official decoder layers use 0.0; only the deformable
encoder uses MODEL.MASK_FORMER.DROPOUT). The released models have ``dropout`` 0.0, so this does not
show there.
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode

from ..checkpoint.model_json import Field, flag, integer, integers, number, text
from ..errors import HFImportError
from .hf import (
    _DEC,
    _DIM,
    _FFN,
    _HEAD,
    _HEADS,
    _LAYERS,
    _PROBABILITY,
    _QUERIES,
    _TRF,
    _WEIGHT,
    HFModel,
    _add_swin_relative_position_index,
    _backbone_rules,
    _cfg_from_overrides,
    _find_datasets,
    _label_names,
    _levels,
    _module_rules,
    _no_datasets,
    _overrides,
    _pick_datasets,
    _qkv_rules,
    _re,
    _rename_tensors,
    _require,
    _Rule,
    _rule,
    import_hf,
)

__all__ = ["convert_state_dict", "config_overrides", "config_from_hf", "import_hf_mask2former", "HFImportError"]

logger = logging.getLogger(__name__)

_PD = _HEAD + "pixel_decoder."
_PRED = _HEAD + "predictor."
_NUM_ENCODER_LEVELS = 3  # both: the deformable encoder and the decoder use the 3 coarsest levels
_ENCODER_FFN_DIM = 1024  # fixed in the official pixel decoder (and ours)


# ----------------------------------------------------------------------------- key renaming
def _pixel_decoder_rules() -> List[_Rule]:
    dec = _re(_DEC)
    layer = dec + r"encoder\.layers\.(\d+)\."
    ours = _PD + r"transformer.encoder.layers.\1."
    return [
        _rule(dec + r"input_projections\.(\d+)\.([01])\.(weight|bias)$", _PD + r"input_proj.\1.\2.\3"),
        _rule(dec + r"level_embed$", _PD + "transformer.level_embed"),
        _rule(layer + r"self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)$",
              ours + r"self_attn.\2.\3"),
        *_module_rules(layer, ours, {"self_attn_layer_norm": "norm1", "fc1": "linear1", "fc2": "linear2",
                                     "final_layer_norm": "norm2"}),
        *_module_rules(dec, _PD, {"mask_projection": "mask_features"}),
        _rule(dec + r"(adapter|layer)_(\d+)\.0\.weight$", _PD + r"\1_\2.weight"),
        _rule(dec + r"(adapter|layer)_(\d+)\.1\.(weight|bias)$", _PD + r"\1_\2.norm.\3"),
    ]


def _decoder_rules() -> List[_Rule]:
    trf = _re(_TRF)
    layer = trf + r"decoder\.layers\.(\d+)\."
    cross, self_, ffn = (_PRED + f"transformer_{kind}_layers." + r"\1."
                         for kind in ("cross_attention", "self_attention", "ffn"))
    return [
        _rule(trf + r"queries_features\.weight$", _PRED + "query_feat.weight"),
        _rule(trf + r"queries_embedder\.weight$", _PRED + "query_embed.weight"),
        _rule(trf + r"level_embed\.weight$", _PRED + "level_embed.weight"),
        _rule(trf + r"input_projections\.(\d+)\.(weight|bias)$", _PRED + r"input_proj.\1.\2"),
        *_module_rules(trf, _PRED, {"decoder.layernorm": "decoder_norm"}),
        _rule(trf + r"decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.(weight|bias)$",
              _PRED + r"mask_embed.layers.\1.\2"),
        _rule(layer + r"cross_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
              cross + r"multihead_attn.\2"),
        *_module_rules(layer, cross, {"cross_attn_layer_norm": "norm"}),
        *_module_rules(layer, self_, {"self_attn.out_proj": "self_attn.out_proj", "self_attn_layer_norm": "norm"}),
        *_module_rules(layer, ffn, {"fc1": "linear1", "fc2": "linear2", "final_layer_norm": "norm"}),
        *_module_rules("^", _PRED, {"class_predictor": "class_embed"}),
        _rule(r"^criterion\.empty_weight$", "criterion.empty_weight"),
        *_qkv_rules(layer + "self_attn", self_ + "self_attn"),
    ]


def convert_state_dict(hf_state_dict: Dict[str, torch.Tensor], hf_config) -> Dict[str, torch.Tensor]:
    """Rename a ``Mask2FormerForUniversalSegmentation`` state dict to the official (our) keys.

    Args:
        hf_state_dict: ``hf_model.state_dict()``.
        hf_config: its ``Mask2FormerConfig`` (selects the backbone rules).

    Raises:
        HFImportError: a tensor no rule knows (an unsupported HF variant), named in the message.
    """
    rules = _backbone_rules(hf_config) + _pixel_decoder_rules() + _decoder_rules()
    out = _rename_tensors(hf_state_dict, rules, "Mask2Former")
    _add_swin_relative_position_index(out, hf_config)
    return out


# ----------------------------------------------------------------------------- config
def _check_architecture(hf_config) -> None:
    """Raise HFImportError for settings the official architecture (and ours) cannot express."""
    _require(hf_config.activation_function == "relu",
             f"decoder activation {hf_config.activation_function!r}: only 'relu'")
    _require(int(hf_config.encoder_feedforward_dim) == _ENCODER_FFN_DIM,
             f"encoder_feedforward_dim {hf_config.encoder_feedforward_dim}: the official pixel decoder "
             f"is built with {_ENCODER_FFN_DIM} only")
    _require(list(hf_config.feature_strides) == [4, 8, 16, 32],
             f"feature_strides {list(hf_config.feature_strides)}: only [4, 8, 16, 32] (the backbone's strides)")
    stages = list(getattr(hf_config.backbone_config, "out_features", None) or [])
    expected = [f"stage{i + 1}" for i in range(len(_levels(hf_config)))]
    _require(stages == expected and len(stages) > _NUM_ENCODER_LEVELS,
             f"backbone out_features {stages}: only all 4 stages {expected} (res2-res5)")


def _task_overrides(hf_config) -> Dict[str, Any]:
    """DATASETS.TRAIN/TEST naming a registered dataset with the model's class names, and the
    output tasks of the official config of that kind of model:

    * the names of all classes of datasets that all have thing classes (COCO's 133 panoptic
      classes): semantic, instance and panoptic output (official COCO panoptic configs);
    * the names of a dataset's thing classes (COCO's 80): instance output only (official
      instance configs);
    * otherwise (ADE20K's 150, also the classes of a semantic-only dataset): semantic output.
    """
    names = _label_names(hf_config)
    if not all(names):
        return _no_datasets(len(names))
    all_classes = _find_datasets(names, ("stuff_classes",))
    if all_classes:
        out = _pick_datasets(all_classes)
        if all(has_things for _, has_things in all_classes):
            out.update({"MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True, "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
                        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True})
        return out
    things = _find_datasets(names, ("thing_classes",))
    if not things:
        return _no_datasets(len(names))
    from detectron2.data import MetadataCatalog

    instance_only = [f for f in things if not MetadataCatalog.get(f[0]).get("stuff_classes", None)]
    out = _pick_datasets(instance_only or things)
    out.update({"MODEL.MASK_FORMER.TEST.SEMANTIC_ON": False, "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
                "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False})
    return out


# Mask2FormerConfig fields -> maskformer_d2 config keys (and fields checked only)
_MASK2FORMER_FIELDS = (
    Field("ignore_value", integer(-1, 65535), "MODEL.SEM_SEG_HEAD.IGNORE_VALUE"),
    Field("feature_size", _DIM, "MODEL.SEM_SEG_HEAD.CONVS_DIM"),
    Field("mask_feature_size", _DIM, "MODEL.SEM_SEG_HEAD.MASK_DIM"),
    Field("encoder_layers", integer(0, 100), "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS"),
    Field("common_stride", integer(1, 32), "MODEL.SEM_SEG_HEAD.COMMON_STRIDE"),
    Field("enforce_input_projection", flag(), "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ"),
    Field("hidden_dim", _DIM, "MODEL.MASK_FORMER.HIDDEN_DIM"),
    Field("num_queries", _QUERIES, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"),
    Field("num_attention_heads", _HEADS, "MODEL.MASK_FORMER.NHEADS"),
    Field("dim_feedforward", _FFN, "MODEL.MASK_FORMER.DIM_FEEDFORWARD"),
    Field("decoder_layers", _LAYERS, "MODEL.MASK_FORMER.DEC_LAYERS"),  # same count: decoder_layers - 1 layers
    Field("pre_norm", flag(), "MODEL.MASK_FORMER.PRE_NORM"),
    Field("dropout", _PROBABILITY, "MODEL.MASK_FORMER.DROPOUT"),
    Field("use_auxiliary_loss", flag(), "MODEL.MASK_FORMER.DEEP_SUPERVISION"),
    Field("no_object_weight", _WEIGHT, "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT"),
    Field("class_weight", _WEIGHT, "MODEL.MASK_FORMER.CLASS_WEIGHT"),
    Field("dice_weight", _WEIGHT, "MODEL.MASK_FORMER.DICE_WEIGHT"),
    Field("mask_weight", _WEIGHT, "MODEL.MASK_FORMER.MASK_WEIGHT"),
    Field("train_num_points", integer(1, 10**7), "MODEL.MASK_FORMER.TRAIN_NUM_POINTS"),
    Field("oversample_ratio", number(0, 1000), "MODEL.MASK_FORMER.OVERSAMPLE_RATIO"),
    Field("importance_sample_ratio", _PROBABILITY, "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO"),
    Field("encoder_feedforward_dim", _FFN),
    Field("activation_function", text()),
    Field("feature_strides", integers(1, 1024)),
)


def config_overrides(hf_config, preprocessor: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """maskformer_d2 config values equivalent to a HF ``Mask2FormerConfig`` (and its
    ``preprocessor_config.json`` dict, if any), as :func:`.hf.config_overrides` for MaskFormer."""
    _check_architecture(hf_config)
    fixed = {
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": _levels(hf_config)[-_NUM_ENCODER_LEVELS:],
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "multi_scale_pixel_decoder",
        # the thresholds of every official Mask2Former config
        "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.8,
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.8,
    }
    return _overrides(hf_config, preprocessor, fixed, _MASK2FORMER_FIELDS, _task_overrides)


def config_from_hf(hf_config, preprocessor: Optional[Dict[str, Any]] = None) -> CfgNode:
    """A full maskformer_d2 config (``get_cfg()`` + ``add_maskformer_config``) for a HF Mask2Former."""
    return _cfg_from_overrides(config_overrides(hf_config, preprocessor))


# ----------------------------------------------------------------------------- end to end
_MASK2FORMER = HFModel(
    name="Mask2Former", model_type="mask2former", fields=_MASK2FORMER_FIELDS,
    config_class="Mask2FormerConfig", model_class="Mask2FormerForUniversalSegmentation",
    config_overrides=config_overrides, convert_state_dict=convert_state_dict,
)


def import_hf_mask2former(name_or_path: str, output_dir: str) -> Tuple[str, str]:
    """Convert a HF Mask2Former into ``output_dir``: the weights with the official tensor names and
    a ``config.yaml`` for them; returns their paths (see :func:`.hf.import_hf`)."""
    return import_hf(name_or_path, output_dir, _MASK2FORMER)
