"""Import Hugging Face ``transformers`` MaskFormer models (Swin or ResNet backbone) into maskformer_d2.

``MaskFormerForInstanceSegmentation`` is the same network as the official MaskFormer with the
``BasePixelDecoder`` (no transformer encoder in the pixel decoder) and the transformer decoder on the
backbone's last feature map, so its weights map one-to-one onto ours:

* :func:`convert_state_dict` renames (and, for attention, concatenates) the tensors;
* :func:`config_from_hf` builds the matching detectron2 config;
* :func:`import_hf_maskformer` does both for a model on disk / in the HF cache and writes
  ``model_final.safetensors`` and ``config.yaml`` (tools/convert-hf-maskformer-to-d2.py is its CLI).

The Mask2Former importer (:mod:`.hf_mask2former`) reuses the backbone rules (Swin in both HF
flavours, ResNet), the backbone / preprocessor / dataset config helpers, the end-to-end import
(:func:`import_hf`), the file writing and the command line (:func:`main`) defined here. Each
config value comes from a table of :class:`~maskformer_d2.checkpoint.model_json.Field`
(``_SWIN_FIELDS``, ``_MASKFORMER_FIELDS``, ...) that also says which values a folder's
``config.json`` may hold: they are checked before transformers sees the file (:mod:`.hf_folder`).

Conventions that differ from the official code and that the conversion absorbs:

* HF splits fused projections: Swin ``attn.qkv`` into ``query/key/value``, the decoder's
  ``in_proj_weight`` into ``q_proj/k_proj/v_proj``; they are concatenated back in q, k, v order.
* HF's FPN lists lateral layers from coarse to fine (``fpn.layers.0`` reads res4); ours are
  numbered from fine to coarse (``adapter_1`` reads res2), and HF's ``fpn.stem`` is our ``layer_4``.
* HF's Swin keeps a final ``model.layernorm`` that its backbone outputs never use (the per-stage
  ``hidden_states_norms`` are the official ``norm0..3``); it is dropped.
* HF takes ``pixel_values`` already normalised (its image processor divides by 255, then applies
  ImageNet mean/std); our meta-arch normalises 0..255 RGB images with ``MODEL.PIXEL_MEAN/STD``,
  which are the same numbers x255.

Numerically the two networks are the same at inference; remaining differences are float rounding
(HF scales attention logits after the matmul, torch's MultiheadAttention before; BatchNorm in eval
mode vs FrozenBatchNorm), below 1e-4 (tests/test_hf_import.py). Where HF is *not* the official
model: HF's MaskFormer has no transformer-encoder pixel decoder, so only ``BasePixelDecoder`` models
exist there; and HF's auxiliary (deep-supervision) logits, ``use_auxiliary_loss=True``, are computed
from the decoder's input (all zeros) and the earlier layers' outputs *without* the decoder's final
LayerNorm, while the official ``aux_outputs`` (and ours) use each earlier layer's output after that
LayerNorm. This changes HF's training losses only, not its predictions.
"""
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg

from ..checkpoint.atomic import write_atomically
from ..checkpoint.model_json import (
    Field,
    FieldError,
    check_fields,
    field_values,
    flag,
    integer,
    integers,
    number,
    numbers,
    one_of,
    read_json,
    refuse_actions,
    shown,
    stage_names,
    text,
)
from ..config import add_maskformer_config
from ..errors import HFImportError
from .files import write_safetensors_checkpoint
from .hf_folder import (
    CONFIG,
    MAX_LABELS,
    PREPROCESSOR,
    build_config,
    check_labels,
    load_model,
    local_file,
    resolve_folder,
)

__all__ = ["convert_state_dict", "config_from_hf", "import_hf_maskformer", "import_hf", "HFModel", "HFImportError"]

logger = logging.getLogger(__name__)

_ENC = "model.pixel_level_module.encoder."
_DEC = "model.pixel_level_module.decoder."
_TRF = "model.transformer_module."
_HEAD = "sem_seg_head."

# d2 ResNet depth for HF per-stage block counts
_RESNET_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}
# ImageNet mean/std of the HF image processor (0..1 scale) are these /255
_IMAGENET_MEAN = [123.675, 116.280, 103.530]
_IMAGENET_STD = [58.395, 57.120, 57.375]


# ----------------------------------------------------------------------------- key renaming
# (pattern on the HF key, our key template or function of the match, fused part or None).
# A fused part "q"/"k"/"v" marks a piece of a tensor that ours stores concatenated.
_Rule = Tuple[re.Pattern, Callable[[re.Match], str], Optional[str]]


def _re(prefix: str) -> str:
    return "^" + re.escape(prefix)


def _rule(pattern: str, target, part: Optional[str] = None) -> _Rule:
    fn = target if callable(target) else (lambda m, t=target: m.expand(t))
    return re.compile(pattern), fn, part


def _param_group(hf_prefix: str) -> str:
    """The back-reference of the group after the pattern ``hf_prefix``: the parameter name."""
    return "\\" + str(re.compile(hf_prefix).groups + 1)


def _module_rules(hf_prefix: str, ours_prefix: str, modules: Dict[str, str]) -> List[_Rule]:
    """One rule per ``{HF module: our module}`` of ``modules`` (names under the two prefixes) for
    their weight and bias; ``ours_prefix`` may refer to the groups of the ``hf_prefix`` pattern."""
    param = _param_group(hf_prefix)
    return [_rule(hf_prefix + re.escape(hf) + r"\.(weight|bias)$", f"{ours_prefix}{ours}.{param}")
            for hf, ours in modules.items()]


def _qkv_rules(hf_attention: str, ours_attention: str) -> List[_Rule]:
    """HF's ``q_proj/k_proj/v_proj`` of an attention -> the parts of our packed ``in_proj_weight/bias``."""
    param = _param_group(hf_attention)
    return [_rule(hf_attention + rf"\.{part}_proj\.(weight|bias)$", f"{ours_attention}.in_proj_{param}", part)
            for part in "qkv"]


def _swin_rules() -> List[_Rule]:
    """HF Swin backbones -> ``D2SwinTransformer``: MaskFormer's ``maskformer-swin`` (under ``model.``)
    and the plain ``swin`` of Mask2Former (under ``swin.``, or nothing before transformers 5), with
    the block names of either version (``attention.self.query`` / ``attention.q_proj``, ...)."""
    root = _re(_ENC) + r"(?:model\.|swin\.)?"
    blk = root + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
    ours = r"backbone.layers.\1.blocks.\2."
    rel = r"attention\.(?:self|relative_position_bias)\."
    rules = [
        _rule(root + r"embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"backbone.patch_embed.proj.\1"),
        _rule(root + r"embeddings\.norm\.(weight|bias)$", r"backbone.patch_embed.norm.\1"),
        _rule(blk + r"layernorm_before\.(weight|bias)$", ours + r"norm1.\3"),
        _rule(blk + r"layernorm_after\.(weight|bias)$", ours + r"norm2.\3"),
        _rule(blk + rel + r"(relative_position_bias_table|relative_position_index)$", ours + r"attn.\3"),
        _rule(blk + r"attention\.(?:output\.dense|o_proj)\.(weight|bias)$", ours + r"attn.proj.\3"),
        _rule(blk + r"(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)$", ours + r"mlp.fc1.\3"),
        _rule(blk + r"(?:output\.dense|mlp\.fc2)\.(weight|bias)$", ours + r"mlp.fc2.\3"),
        _rule(root + r"encoder\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$",
              r"backbone.layers.\1.downsample.\2"),
        # per-stage output norms: a list in maskformer-swin, "stage1".. in Swin; ours are norm0..
        _rule(_re(_ENC) + r"hidden_states_norms\.(\d+)\.(weight|bias)$", r"backbone.norm\1.\2"),
        _rule(_re(_ENC) + r"hidden_states_norms\.stage(\d+)\.(weight|bias)$",
              lambda m: f"backbone.norm{int(m.group(1)) - 1}.{m.group(2)}"),
    ]
    for part, old, new in (("q", "query", "q_proj"), ("k", "key", "k_proj"), ("v", "value", "v_proj")):
        rules.append(_rule(blk + rf"attention\.(?:self\.{old}|{new})\.(weight|bias)$", ours + r"attn.qkv.\3", part))
    return rules


def _resnet_rules() -> List[_Rule]:
    bn = r"normalization\.(weight|bias|running_mean|running_var)$"

    def block(m: re.Match, what: str) -> str:
        stage, idx = int(m.group(1)), m.group(2)
        return f"backbone.res{stage + 2}.{idx}.{what}"

    layer = _re(_ENC) + r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
    return [
        _rule(_re(_ENC) + r"embedder\.embedder\.convolution\.weight$", "backbone.stem.conv1.weight"),
        _rule(_re(_ENC) + r"embedder\.embedder\." + bn, r"backbone.stem.conv1.norm.\1"),
        _rule(layer + r"shortcut\.convolution\.weight$", lambda m: block(m, "shortcut.weight")),
        _rule(layer + r"shortcut\." + bn, lambda m: block(m, f"shortcut.norm.{m.group(3)}")),
        _rule(layer + r"layer\.(\d+)\.convolution\.weight$",
              lambda m: block(m, f"conv{int(m.group(3)) + 1}.weight")),
        _rule(layer + r"layer\.(\d+)\." + bn,
              lambda m: block(m, f"conv{int(m.group(3)) + 1}.norm.{m.group(4)}")),
    ]


def _head_rules(num_levels: int) -> List[_Rule]:
    pd = _HEAD + "pixel_decoder."
    coarse = num_levels  # HF's fpn.stem is our layer_<num_levels>

    def fpn(m: re.Match, what: str, norm: bool) -> str:
        level = num_levels - 1 - int(m.group(1))  # fpn.layers.0 reads the second-coarsest level
        return f"{pd}{what}_{level}{'.norm' if norm else ''}.{m.group(2)}"

    dl = _re(_TRF) + r"decoder\.layers\.(\d+)\."
    ours = _HEAD + r"predictor.transformer.decoder.layers.\1."
    return [
        _rule(_re(_DEC) + r"fpn\.stem\.0\.weight$", f"{pd}layer_{coarse}.weight"),
        _rule(_re(_DEC) + r"fpn\.stem\.1\.(weight|bias)$", pd + f"layer_{coarse}" + r".norm.\1"),
        _rule(_re(_DEC) + r"fpn\.layers\.(\d+)\.proj\.0\.(weight)$", lambda m: fpn(m, "adapter", False)),
        _rule(_re(_DEC) + r"fpn\.layers\.(\d+)\.proj\.1\.(weight|bias)$", lambda m: fpn(m, "adapter", True)),
        _rule(_re(_DEC) + r"fpn\.layers\.(\d+)\.block\.0\.(weight)$", lambda m: fpn(m, "layer", False)),
        _rule(_re(_DEC) + r"fpn\.layers\.(\d+)\.block\.1\.(weight|bias)$", lambda m: fpn(m, "layer", True)),
        _rule(_re(_TRF) + r"queries_embedder\.weight$", _HEAD + "predictor.query_embed.weight"),
        *_module_rules(_re(_DEC), pd, {"mask_projection": "mask_features"}),
        *_module_rules(_re(_TRF), _HEAD + "predictor.", {"input_projection": "input_proj",
                                                         "decoder.layernorm": "transformer.decoder.norm"}),
        *_module_rules(dl, ours, {"self_attn.o_proj": "self_attn.out_proj", "self_attn_layer_norm": "norm1",
                                  "encoder_attn.o_proj": "multihead_attn.out_proj", "encoder_attn_layer_norm": "norm2",
                                  "mlp.fc1": "linear1", "mlp.fc2": "linear2", "final_layer_norm": "norm3"}),
        *_module_rules("^", _HEAD + "predictor.", {"class_predictor": "class_embed"}),
        _rule(r"^mask_embedder\.(\d+)\.0\.(weight|bias)$", _HEAD + r"predictor.mask_embed.layers.\1.\2"),
        _rule(r"^criterion\.empty_weight$", "criterion.empty_weight"),
        *_qkv_rules(dl + "self_attn", ours + "self_attn"),
        *_qkv_rules(dl + "encoder_attn", ours + "multihead_attn"),
    ]


# HF tensors with no counterpart: the unused final Swin norm, BatchNorm step counters
_DROPPED = re.compile(r"(^" + re.escape(_ENC) + r"(?:model\.|swin\.)?layernorm\.|num_batches_tracked$)")


def _backbone_rules(hf_config) -> List[_Rule]:
    """The renaming rules of the config's backbone (Swin or ResNet), shared by both importers."""
    return _swin_rules() if _backbone_kind(hf_config) == "swin" else _resnet_rules()


def _rename_tensors(hf_state_dict: Dict[str, torch.Tensor], rules: Sequence[_Rule],
                   variant: str) -> "OrderedDict[str, torch.Tensor]":
    """Apply renaming ``rules`` (first match wins) to every tensor; fused q/k/v parts are concatenated.

    Args:
        variant: the model's name in the error message ("MaskFormer", "Mask2Former").

    Raises:
        HFImportError: a tensor no rule knows (an unsupported HF variant), named in the message.
    """
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    fused: Dict[str, Dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in hf_state_dict.items():
        if _DROPPED.search(key):
            continue
        for pattern, target, part in rules:
            m = pattern.match(key)
            if m is None:
                continue
            name = target(m)
            if part is None:
                out[name] = value
            else:
                fused.setdefault(name, {})[part] = value
            break
        else:
            unknown.append(key)
    if unknown:
        raise HFImportError(
            f"{len(unknown)} Hugging Face tensors have no maskformer_d2 counterpart "
            f"(e.g. {', '.join(unknown[:3])}); this {variant} variant is not supported"
        )
    for name, parts in fused.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise HFImportError(f"{name}: found only the {sorted(parts)} parts of a fused q/k/v tensor")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _add_swin_relative_position_index(state: "OrderedDict[str, torch.Tensor]", hf_config) -> None:
    """Add the ``attn.relative_position_index`` buffers a HF Swin state dict may lack.

    transformers 5 no longer saves them (they are a function of the window size); our Swin, like
    the official one, keeps them in its state dict, so a strict load needs them.
    """
    if _backbone_kind(hf_config) != "swin":
        return
    from ..modeling.backbone.swin import relative_position_index

    window = int(hf_config.backbone_config.window_size)
    for key in [k for k in state if k.endswith(".attn.relative_position_bias_table")]:
        index_key = key[: -len("relative_position_bias_table")] + "relative_position_index"
        if index_key not in state:
            state[index_key] = relative_position_index((window, window))


def convert_state_dict(hf_state_dict: Dict[str, torch.Tensor], hf_config) -> "OrderedDict[str, torch.Tensor]":
    """Rename a ``MaskFormerForInstanceSegmentation`` state dict to maskformer_d2's keys.

    Args:
        hf_state_dict: ``hf_model.state_dict()``.
        hf_config: its ``MaskFormerConfig`` (selects the backbone rules and the FPN depth).

    Raises:
        HFImportError: a tensor no rule knows (an unsupported HF variant), named in the message.
    """
    num_levels = len(_hf_stage_channels(hf_config))
    out = _rename_tensors(hf_state_dict, _backbone_rules(hf_config) + _head_rules(num_levels), "MaskFormer")
    _add_swin_relative_position_index(out, hf_config)
    return out


# ----------------------------------------------------------------------------- config
# Bounds of the sizes a HF config may ask for: generous for every released model (Swin-L has
# embed_dim 192, 1536 channels in res5; ResNet-152 2048), small enough to refuse absurd ones
# before a model is built. The weights file must hold the parameters anyway (hf_folder.load_model).
_DIM = integer(1, 8192)
_FFN = integer(1, 65536)
_LAYERS = integer(1, 100)
_HEADS = integer(1, 256)
_QUERIES = integer(1, 2000)
_WEIGHT = number(0, 1e6)  # a loss weight
_PROBABILITY = number(0, 1)
_PIXELS = integer(1, 16384)  # an image side

# backbone_config fields -> MODEL.SWIN.* / MODEL.RESNETS.* (and fields checked only)
_SWIN_FIELDS = (
    Field("embed_dim", _DIM, "MODEL.SWIN.EMBED_DIM"),
    Field("depths", integers(1, 64), "MODEL.SWIN.DEPTHS"),
    Field("num_heads", integers(1, 256), "MODEL.SWIN.NUM_HEADS"),
    Field("window_size", integer(1, 256), "MODEL.SWIN.WINDOW_SIZE"),
    Field("patch_size", integer(1, 256), "MODEL.SWIN.PATCH_SIZE"),
    Field("mlp_ratio", number(0, 64, above=True), "MODEL.SWIN.MLP_RATIO"),
    Field("qkv_bias", flag(), "MODEL.SWIN.QKV_BIAS"),
    Field("image_size", _PIXELS, "MODEL.SWIN.PRETRAIN_IMG_SIZE"),
    Field("drop_path_rate", _PROBABILITY, "MODEL.SWIN.DROP_PATH_RATE"),
    Field("use_absolute_embeddings", flag()),
    Field("hidden_act", text()),
    Field("layer_norm_eps", number(0, 1, above=True)),
    Field("num_channels", one_of(3)),
    Field("out_features", stage_names()),
)
_RESNET_FIELDS = (
    Field("embedding_size", _DIM, "MODEL.RESNETS.STEM_OUT_CHANNELS"),
    Field("downsample_in_bottleneck", flag(), "MODEL.RESNETS.STRIDE_IN_1X1"),
    Field("hidden_sizes", integers(1, 65536)),
    Field("depths", integers(1, 64)),
    Field("layer_type", one_of("basic", "bottleneck")),
    Field("hidden_act", text()),
    Field("downsample_in_first_stage", flag()),
    Field("num_channels", one_of(3)),
    Field("out_features", stage_names()),
)
_BACKBONE_FIELDS = {"swin": _SWIN_FIELDS, "maskformer-swin": _SWIN_FIELDS, "resnet": _RESNET_FIELDS}
# fields of both models' config.json, at its top level
_COMMON_FIELDS = (
    Field("num_labels", integer(1, MAX_LABELS), "MODEL.SEM_SEG_HEAD.NUM_CLASSES"),
    Field("dtype", one_of(None, "float32", "float16", "bfloat16")),
    Field("torch_dtype", one_of(None, "float32", "float16", "bfloat16")),
)
# MaskFormerConfig fields -> maskformer_d2 config keys
_MASKFORMER_FIELDS = (
    Field("fpn_feature_size", _DIM, "MODEL.SEM_SEG_HEAD.CONVS_DIM"),
    Field("mask_feature_size", _DIM, "MODEL.SEM_SEG_HEAD.MASK_DIM"),
    Field("decoder_config.d_model", _DIM, "MODEL.MASK_FORMER.HIDDEN_DIM"),
    Field("decoder_config.num_queries", _QUERIES, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"),
    Field("decoder_config.decoder_attention_heads", _HEADS, "MODEL.MASK_FORMER.NHEADS"),
    Field("decoder_config.decoder_ffn_dim", _FFN, "MODEL.MASK_FORMER.DIM_FEEDFORWARD"),
    Field("decoder_config.decoder_layers", _LAYERS, "MODEL.MASK_FORMER.DEC_LAYERS"),
    Field("decoder_config.dropout", _PROBABILITY, "MODEL.MASK_FORMER.DROPOUT"),
    Field("no_object_weight", _WEIGHT, "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT"),
    Field("dice_weight", _WEIGHT, "MODEL.MASK_FORMER.DICE_WEIGHT"),
    Field("mask_weight", _WEIGHT, "MODEL.MASK_FORMER.MASK_WEIGHT"),
    Field("decoder_config.activation_function", text()),
)


def _image_size(value: Any) -> Any:
    """An image processor's ``size``: a number of pixels, or an object of them (null allowed)."""
    if not isinstance(value, dict):
        return _PIXELS(value)
    for key, side in value.items():
        if side is not None:
            try:
                _PIXELS(side)
            except FieldError as e:
                raise FieldError(f"{key} {e}") from None
    return value


_PREPROCESSOR_FIELDS = (
    Field("do_rescale", flag()),
    Field("rescale_factor", number(0, 1e6, above=True)),
    Field("do_normalize", flag()),
    Field("image_mean", numbers(-1e6, 1e6, 3)),
    Field("image_std", numbers(0, 1e6, 3, above=True)),
    Field("size", _image_size),
)


def _backbone_kind(hf_config) -> str:
    model_type = getattr(hf_config.backbone_config, "model_type", "")
    if model_type in ("swin", "maskformer-swin"):
        return "swin"
    if model_type == "resnet":
        return "resnet"
    raise HFImportError(
        f"backbone {model_type!r}: only models with a Swin or ResNet backbone can be imported"
    )


def _hf_stage_channels(hf_config) -> List[int]:
    bb = hf_config.backbone_config
    if _backbone_kind(hf_config) == "swin":
        return [int(bb.embed_dim * 2**i) for i in range(len(bb.depths))]
    return list(bb.hidden_sizes)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise HFImportError(message)


def _swin_overrides(bb) -> Dict[str, Any]:
    _require(not getattr(bb, "use_absolute_embeddings", False),
             "Swin with absolute position embeddings (use_absolute_embeddings) is not supported")
    _require(getattr(bb, "hidden_act", "gelu") == "gelu", f"Swin hidden_act {bb.hidden_act!r}: only 'gelu'")
    _require(abs(getattr(bb, "layer_norm_eps", 1e-5) - 1e-5) < 1e-12,
             f"Swin layer_norm_eps {bb.layer_norm_eps}: only 1e-5 (torch's LayerNorm default)")
    _require(len(bb.num_heads) == len(bb.depths),
             f"Swin num_heads {list(bb.num_heads)}: one per stage of depths {list(bb.depths)}")
    return {
        "MODEL.BACKBONE.NAME": "D2SwinTransformer",
        **field_values(bb, _SWIN_FIELDS),
        "MODEL.SWIN.APE": False,
        "MODEL.SWIN.PATCH_NORM": True,
        "MODEL.SWIN.OUT_FEATURES": [f"res{i + 2}" for i in range(len(bb.depths))],
    }


def _resnet_overrides(bb) -> Dict[str, Any]:
    kind = bb.layer_type
    depth = _RESNET_DEPTHS.get((kind, tuple(bb.depths)))
    _require(depth is not None,
             f"ResNet {kind} with depths {list(bb.depths)}: detectron2 builds only "
             f"{sorted(set(d for d in _RESNET_DEPTHS.values()))}-layer ResNets")
    widths = list(bb.hidden_sizes)
    _require(all(b == 2 * a for a, b in zip(widths, widths[1:])),
             f"ResNet hidden_sizes {widths}: detectron2 doubles the channels every stage")
    _require(not getattr(bb, "downsample_in_first_stage", False), "ResNet downsample_in_first_stage is not supported")
    _require(getattr(bb, "hidden_act", "relu") == "relu", f"ResNet hidden_act {bb.hidden_act!r}: only 'relu'")
    if depth in (18, 34):
        _require(widths[0] == 64, f"ResNet-{depth} with {widths[0]} res2 channels: detectron2 needs 64")
    return {
        "MODEL.BACKBONE.NAME": "build_resnet_backbone",
        "MODEL.RESNETS.DEPTH": depth,
        **field_values(bb, _RESNET_FIELDS),
        "MODEL.RESNETS.RES2_OUT_CHANNELS": widths[0],
        "MODEL.RESNETS.NUM_GROUPS": 1,
        # HF's bottleneck is 4x narrower than its output, whatever the width
        "MODEL.RESNETS.WIDTH_PER_GROUP": widths[0] // 4 if kind == "bottleneck" else 64,
        "MODEL.RESNETS.NORM": "FrozenBN",
        "MODEL.RESNETS.STEM_TYPE": "basic",
        "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    }


def _levels(hf_config) -> List[str]:
    """Our names of the backbone's stages: res2, res3, ..."""
    return [f"res{i + 2}" for i in range(len(_hf_stage_channels(hf_config)))]


def _backbone_overrides(hf_config) -> Dict[str, Any]:
    """MODEL.BACKBONE / MODEL.SWIN.* or MODEL.RESNETS.* for the config's backbone."""
    bb = hf_config.backbone_config
    return _swin_overrides(bb) if _backbone_kind(hf_config) == "swin" else _resnet_overrides(bb)


def _label_names(hf_config) -> List[Optional[str]]:
    """The model's class names in class order (None where id2label lacks one)."""
    id2label = getattr(hf_config, "id2label", None) or {}
    return [id2label.get(i, id2label.get(str(i))) for i in range(int(hf_config.num_labels))]


def _find_datasets(class_names: Sequence[str], fields: Sequence[str] = ("stuff_classes", "thing_classes")
                   ) -> List[Tuple[str, bool]]:
    """Registered datasets whose metadata lists exactly ``class_names`` in one of ``fields``, with
    "has thing ids"."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    found = []
    for name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if any(list(meta.get(field, None) or []) == list(class_names) for field in fields):
            found.append((name, meta.get("thing_dataset_id_to_contiguous_id", None) is not None))
    return found


def _pick_datasets(found: Sequence[Tuple[str, bool]]) -> Dict[str, Any]:
    """DATASETS.TRAIN/TEST among ``found``: datasets with thing classes first (so that instance /
    panoptic output can be asked for), then names with "train" / "val"."""
    train = max(found, key=lambda f: (f[1], "train" in f[0]))[0]
    test = max(found, key=lambda f: (f[1], "val" in f[0]))[0]
    return {"DATASETS.TRAIN": (train,), "DATASETS.TEST": (test,)}


def _no_datasets(num_labels: int) -> Dict[str, Any]:
    """Empty DATASETS.TRAIN/TEST, with a warning saying what that means."""
    logger.warning(
        "the model's %d labels match no registered dataset; DATASETS.TRAIN/TEST are left empty, so "
        "the demo shows class numbers", num_labels,
    )
    return {"DATASETS.TRAIN": (), "DATASETS.TEST": ()}


def _dataset_overrides(hf_config) -> Dict[str, Any]:
    """DATASETS.TRAIN/TEST naming a registered dataset with the model's class names (display names,
    thing classes), and PANOPTIC_ON when every such dataset is a panoptic one (e.g. COCO's 133)."""
    names = _label_names(hf_config)
    found = _find_datasets(names) if all(names) else []
    if not found:
        return _no_datasets(len(names))
    out = _pick_datasets(found)
    if all(has_things for _, has_things in found):  # no semantic-only dataset has these classes
        out.update({
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,  # with the thresholds of the shipped configs
            "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.8,
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.8,
        })
    return out


def _preprocessor_overrides(preprocessor: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """PIXEL_MEAN/STD (0..255 scale) and test sizes equivalent to a HF image processor's settings.

    HF computes ``(x * rescale_factor - mean) / std``, which is ``(x - mean/rescale_factor) /
    (std/rescale_factor)``; without a processor, ImageNet statistics (HF's default) are assumed.

    Raises:
        HFImportError: a field of the wrong type or range (``preprocessor_config.json: <field>: ...``).
    """
    if not preprocessor:
        return {"MODEL.PIXEL_MEAN": _IMAGENET_MEAN, "MODEL.PIXEL_STD": _IMAGENET_STD}
    check_fields(preprocessor, _PREPROCESSOR_FIELDS, PREPROCESSOR)
    scale = 1.0 / float(preprocessor.get("rescale_factor", 1 / 255)) if preprocessor.get("do_rescale", True) else 1.0
    if preprocessor.get("do_normalize", True):
        mean = [float(m) * scale for m in preprocessor.get("image_mean", [x / 255 for x in _IMAGENET_MEAN])]
        std = [float(s) * scale for s in preprocessor.get("image_std", [x / 255 for x in _IMAGENET_STD])]
    else:
        mean, std = [0.0] * 3, [scale] * 3
    out: Dict[str, Any] = {"MODEL.PIXEL_MEAN": mean, "MODEL.PIXEL_STD": std}
    size = preprocessor.get("size")
    if isinstance(size, dict) and size.get("shortest_edge"):
        out["INPUT.MIN_SIZE_TEST"] = int(size["shortest_edge"])
        if size.get("longest_edge"):
            out["INPUT.MAX_SIZE_TEST"] = int(size["longest_edge"])
    return out


# what both models' configs share
_COMMON_OVERRIDES = {
    "MODEL.META_ARCHITECTURE": "MaskFormer",
    "MODEL.WEIGHTS": "",
    "INPUT.FORMAT": "RGB",
    "MODEL.SEM_SEG_HEAD.NAME": "MaskFormerHead",
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.MASK_FORMER.ENC_LAYERS": 0,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
}


def _overrides(hf_config, preprocessor: Optional[Dict[str, Any]], fixed: Dict[str, Any],
               fields: Sequence[Field], datasets: Callable[[Any], Dict[str, Any]]) -> Dict[str, Any]:
    """The config values of a HF model: what both models share, the model's ``fixed`` values, its
    config ``fields``, backbone, preprocessor and ``datasets`` (a function of the HF config)."""
    out: Dict[str, Any] = {**_COMMON_OVERRIDES, "MODEL.SEM_SEG_HEAD.IN_FEATURES": _levels(hf_config), **fixed}
    out.update(field_values(hf_config, (*_COMMON_FIELDS, *fields)))
    heads, width = out["MODEL.MASK_FORMER.NHEADS"], out["MODEL.MASK_FORMER.HIDDEN_DIM"]
    _require(width % heads == 0, f"{heads} decoder attention heads do not divide its width {width}")
    out.update(_backbone_overrides(hf_config))
    out.update(_preprocessor_overrides(preprocessor))
    out.update(datasets(hf_config))
    return out


def config_overrides(hf_config, preprocessor: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """maskformer_d2 config values (``"MODEL.X.Y": value``) equivalent to a HF ``MaskFormerConfig``.

    Args:
        hf_config: the ``MaskFormerConfig``.
        preprocessor: the model's ``preprocessor_config.json`` as a dict (mean/std/test size), if any.

    Raises:
        HFImportError: a setting maskformer_d2 cannot express, named in the message.
    """
    dec = hf_config.decoder_config
    _require(getattr(dec, "activation_function", "relu") == "relu",
             f"decoder activation {dec.activation_function!r}: only 'relu'")
    fixed = {
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 0,
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": _levels(hf_config)[-1],
        "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
        "MODEL.MASK_FORMER.PRE_NORM": False,
    }
    return _overrides(hf_config, preprocessor, fixed, _MASKFORMER_FIELDS, _dataset_overrides)


def config_from_hf(hf_config, preprocessor: Optional[Dict[str, Any]] = None) -> CfgNode:
    """A full maskformer_d2 config (``get_cfg()`` + ``add_maskformer_config``) for a HF MaskFormer."""
    return _cfg_from_overrides(config_overrides(hf_config, preprocessor))


def _cfg_from_overrides(overrides: Dict[str, Any]) -> CfgNode:
    """``get_cfg()`` + ``add_maskformer_config`` with ``overrides`` ("MODEL.X.Y": value) merged in."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    flat: List[Any] = []
    for key, value in overrides.items():
        flat += [key, value]
    cfg.merge_from_list(flat)
    return cfg


# ----------------------------------------------------------------------------- end to end
@dataclass(frozen=True)
class HFModel:
    """What the import of one kind of HF model needs; everything else is shared."""

    name: str  # in messages: "MaskFormer"
    model_type: str  # of its config.json
    fields: Sequence[Field]  # config.json fields besides the backbone's and _COMMON_FIELDS
    config_class: str  # transformers class names
    model_class: str
    config_overrides: Callable[[Any, Optional[Dict[str, Any]]], Dict[str, Any]]
    convert_state_dict: Callable[[Dict[str, torch.Tensor], Any], Dict[str, torch.Tensor]]


# HF entries a checkpoint may lack without loss: the model computes them from its config
_REBUILT_BY_HF = ("criterion.empty_weight", "relative_position_index", "num_batches_tracked")
# model_type -> (name, command line), to point at the right importer
_TOOLS = {"maskformer": ("MaskFormer", "tools/convert-hf-maskformer-to-d2.py"),
          "mask2former": ("Mask2Former", "tools/convert-hf-mask2former-to-d2.py")}


def _check_config_json(data: Dict[str, Any], kind: HFModel) -> None:
    """Refuse a ``config.json`` of another model, with custom code or fetches, or with a field the
    import uses of the wrong type or out of bounds; one line ``config.json: <field>: ...``."""
    refuse_actions(data, CONFIG)
    model_type = data.get("model_type")
    if model_type != kind.model_type:
        other = _TOOLS.get(model_type) if isinstance(model_type, str) else None
        hint = f"a {other[0]}, not a {kind.name}; use {other[1]}" if other else \
            f"not a {kind.name} ({kind.model_type!r})"
        raise HFImportError(f"{CONFIG}: model_type: {shown(model_type)}: {hint}")
    backbone = data.get("backbone_config")
    if not isinstance(backbone, dict):
        raise HFImportError(f"{CONFIG}: backbone_config: must be an object (the backbone's config), "
                            f"not {shown(backbone)}")
    check_fields(data, [Field("model_type", one_of(*_BACKBONE_FIELDS))], CONFIG, "backbone_config.")
    if "model_type" not in backbone:
        raise HFImportError(f"{CONFIG}: backbone_config.model_type: missing (Swin or ResNet backbones only)")
    check_fields(data, _BACKBONE_FIELDS[backbone["model_type"]], CONFIG, "backbone_config.")
    check_fields(data, (*_COMMON_FIELDS, *kind.fields), CONFIG)
    check_labels(data, CONFIG)


def import_hf(source: str, output_dir: str, kind: HFModel) -> Tuple[str, str]:
    """Convert a HF model of ``kind`` (a ``save_pretrained`` folder, or a hub id: downloaded into
    the HF cache, or found there). Its JSON files are checked, its config converted and its
    weights read safely (:mod:`.hf_folder`) before anything is written to ``output_dir``:
    ``model_final.safetensors`` (the tensors; "__author__" in its metadata) and ``config.yaml``
    (load it with ``cfg.merge_from_file`` after ``add_maskformer_config``).

    Returns:
        (weights path, config path).

    Raises:
        HFImportError / CheckpointReadError: one line naming the file (and field) at fault.
        OSError: ``source`` is neither a folder nor a reachable / cached hub id.
    """
    import transformers

    folder = resolve_folder(source)
    data = read_json(folder, CONFIG)
    if data is None:
        raise HFImportError(f"no {CONFIG}: not a Hugging Face model folder")
    _check_config_json(data, kind)
    hf_config = build_config(getattr(transformers, kind.config_class), data)
    preprocessor = _read_preprocessor(folder)
    try:
        cfg = _cfg_from_overrides(kind.config_overrides(hf_config, preprocessor))
    except HFImportError as e:  # a setting of config.json maskformer_d2 cannot express
        raise HFImportError(f"{CONFIG}: {e}") from None
    model = load_model(getattr(transformers, kind.model_class), folder, hf_config, _REBUILT_BY_HF)
    state = kind.convert_state_dict(model.state_dict(), model.config)
    return _write_import(state, cfg, source, output_dir)


def _read_preprocessor(name_or_path: str) -> Optional[Dict[str, Any]]:
    """The model's ``preprocessor_config.json`` (folder or HF cache), or None when it has none.

    Raises:
        HFImportError: the file is not a JSON object, asks to run code, or a field it has is of the
            wrong type or out of bounds (``preprocessor_config.json: <field>: ...``).
    """
    path = None
    try:
        path = local_file(name_or_path, PREPROCESSOR)
    except OSError:
        pass
    preprocessor = read_json(os.path.dirname(path), PREPROCESSOR) if path else None
    if preprocessor is None:
        logger.warning("%s has no %s; assuming ImageNet mean/std", name_or_path, PREPROCESSOR)
        return None
    refuse_actions(preprocessor, PREPROCESSOR)
    check_fields(preprocessor, _PREPROCESSOR_FIELDS, PREPROCESSOR)
    return preprocessor


_MASKFORMER = HFModel(
    name="MaskFormer", model_type="maskformer", fields=_MASKFORMER_FIELDS,
    config_class="MaskFormerConfig", model_class="MaskFormerForInstanceSegmentation",
    config_overrides=config_overrides, convert_state_dict=convert_state_dict,
)


def import_hf_maskformer(name_or_path: str, output_dir: str) -> Tuple[str, str]:
    """Convert a HF MaskFormer (see :func:`import_hf`).

    Returns:
        (weights path, config path).
    """
    return import_hf(name_or_path, output_dir, _MASKFORMER)


def _write_import(state: Dict[str, torch.Tensor], cfg: CfgNode, name_or_path: str,
                  output_dir: str) -> Tuple[str, str]:
    """Write ``model_final.safetensors`` and a ``config.yaml`` whose MODEL.WEIGHTS points at it
    (each atomically: a failed write leaves no partial file)."""
    os.makedirs(output_dir, exist_ok=True)
    weights = os.path.join(output_dir, "model_final.safetensors")
    write_safetensors_checkpoint(state, weights, f"huggingface:{name_or_path}", matching_heuristics=False)
    cfg.MODEL.WEIGHTS = os.path.abspath(weights)
    config = os.path.join(output_dir, "config.yaml")
    text_ = cfg.dump()
    write_atomically(config, lambda f: f.write(text_.encode("utf-8")))
    return weights, config


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[List[str]], doc: str, import_fn: Callable[[str, str], Tuple[str, str]],
         variant: str) -> int:
    """The command line of an importer: SOURCE OUTPUT_DIR -> weights + config.yaml; one error line
    and status 1 on failure (tools/convert-hf-maskformer-to-d2.py, tools/convert-hf-mask2former-to-d2.py).

    Args:
        import_fn: :func:`import_hf_maskformer` or its Mask2Former counterpart.
        variant: the model's name in the messages ("MaskFormer", "Mask2Former").
    """
    import argparse
    import sys

    from ..checkpoint.safe_load import UNSAFE_PICKLE_ENV, UNSAFE_PICKLE_FLAG, allow_unsafe_pickle
    from ..errors import CheckpointReadError, first_line

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help=f"HF {variant}: save_pretrained folder or hub id")
    ap.add_argument("output_dir", help="folder for model_final.safetensors and config.yaml")
    ap.add_argument(UNSAFE_PICKLE_FLAG, dest="allow_unsafe_pickle", action="store_true",
                    help=f"read a pytorch_model.bin with full pickle, which can run code from the file: "
                         f"only for files you trust (also: {UNSAFE_PICKLE_ENV}=1)")
    args = ap.parse_args(argv)
    if args.allow_unsafe_pickle:
        allow_unsafe_pickle()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # our one error line ends the output, not load reports
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        weights, config = import_fn(args.source, args.output_dir)
    except (HFImportError, CheckpointReadError) as e:
        print(f"error: {args.source}: {first_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # not found locally nor on the hub / in the cache
        reason = first_line(e) or type(e).__name__
        print(f"error: {args.source}: cannot load a Hugging Face {variant} ({reason})", file=sys.stderr)
        return 1
    print(f"wrote {weights}\nwrote {config}")
    return 0
