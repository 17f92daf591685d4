"""Import Hugging Face ``transformers`` EoMT models (``EomtForUniversalSegmentation``) into maskformer_d2.

HF's EoMT is the official one with its own tensor names; the conversion renames them to ours
(:class:`~maskformer_d2.modeling.eomt.EoMT`: the timm ViT under ``backbone.vit.``, the head under
``sem_seg_head.``) and absorbs these differences:

* HF splits each block's attention input projection into ``q_proj/k_proj/v_proj``; timm packs them
  as ``attn.qkv`` (concatenated in q, k, v order). HF's SwiGLU MLP (giant models) has
  ``gate_proj/up_proj/down_proj``; timm's packed SwiGLU has ``mlp.fc1`` = [gate; up] and ``mlp.fc2``.
* HF's position embedding is an ``nn.Embedding`` (N, C); timm's ``pos_embed`` is (1, N, C).
* ``layer_scale{1,2}.lambda1`` is timm's ``ls{1,2}.gamma``; ``layernorm`` the final ``norm``;
  ``query`` / ``class_predictor`` / ``mask_head.fc{1,2,3}`` / ``upscale_block.block.i`` are our
  ``query_embed`` / ``class_embed`` / ``mask_embed.{0,2,4}`` / ``upscale.i``.
* HF takes ``pixel_values`` already normalised; see :mod:`.hf` for the PIXEL_MEAN/STD conversion.

:func:`import_hf_eomt` writes ``model_final.safetensors`` and ``config.yaml``
(tools/convert-hf-eomt-to-d2.py is its command line).
"""
import re
from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.config import CfgNode

from .hf import HFImportError, _cfg_from_overrides, _preprocessor_overrides, _read_preprocessor, _require, _write_import
from .hf_mask2former import _task_overrides

__all__ = ["convert_state_dict", "config_overrides", "config_from_hf", "import_hf_eomt"]

# HF hidden size -> the timm DINOv2 architecture with registers of that width
_TIMM_NAMES = {384: "vit_small_patch14_reg4_dinov2", 768: "vit_base_patch14_reg4_dinov2",
               1024: "vit_large_patch14_reg4_dinov2", 1536: "vit_giant_patch14_reg4_dinov2"}

_SIMPLE = [  # (HF pattern, our name); \1 = the block index
    (r"embeddings\.cls_token", "backbone.vit.cls_token"),
    (r"embeddings\.register_tokens", "backbone.vit.reg_token"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"backbone.vit.patch_embed.proj.\1"),
    (r"layers\.(\d+)\.norm([12])\.(weight|bias)", r"backbone.vit.blocks.\1.norm\2.\3"),
    (r"layers\.(\d+)\.attention\.out_proj\.(weight|bias)", r"backbone.vit.blocks.\1.attn.proj.\2"),
    (r"layers\.(\d+)\.layer_scale([12])\.lambda1", r"backbone.vit.blocks.\1.ls\2.gamma"),
    (r"layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"backbone.vit.blocks.\1.mlp.\2.\3"),
    (r"layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"backbone.vit.blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"backbone.vit.norm.\1"),
    (r"query\.weight", "sem_seg_head.query_embed.weight"),
    (r"class_predictor\.(weight|bias)", r"sem_seg_head.class_embed.\1"),
    (r"upscale_block\.block\.(\d+)\.(conv[12])\.(weight|bias)", r"sem_seg_head.upscale.\1.\2.\3"),
    (r"upscale_block\.block\.(\d+)\.layernorm2d\.(weight|bias)", r"sem_seg_head.upscale.\1.norm.\2"),
    (r"attn_mask_probs", "mask_annealing.probs"),
    (r"criterion\.empty_weight", "criterion.empty_weight"),
]
_MASK_HEAD = {"fc1": 0, "fc2": 2, "fc3": 4}
_PACKED = [  # (HF pattern with the part's name, parts in order, our name)
    (r"layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)", ("q", "k", "v"), "backbone.vit.blocks.{}.attn.qkv.{}"),
    (r"layers\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)", ("gate", "up"), "backbone.vit.blocks.{}.mlp.fc1.{}"),
]


def convert_state_dict(hf_state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename (and pack) an ``EomtForUniversalSegmentation`` state dict to our keys.

    Raises:
        HFImportError: a tensor no rule knows (an unsupported HF variant), named in the message.
    """
    out: Dict[str, torch.Tensor] = {}
    packed: Dict[str, Tuple[Tuple[str, ...], Dict[str, torch.Tensor]]] = {}
    for key, value in hf_state_dict.items():
        key = key[len("model."):] if key.startswith("model.") else key
        if key == "embeddings.position_embeddings.weight":
            out["backbone.vit.pos_embed"] = value[None]
            continue
        m = re.fullmatch(r"mask_head\.(fc[123])\.(weight|bias)", key)
        if m:
            out[f"sem_seg_head.mask_embed.{_MASK_HEAD[m[1]]}.{m[2]}"] = value
            continue
        for pattern, parts, target in _PACKED:
            m = re.fullmatch(pattern, key)
            if m:
                packed.setdefault(target.format(m[1], m[3]), (parts, {}))[1][m[2]] = value
                break
        else:
            for pattern, target in _SIMPLE:
                if re.fullmatch(pattern, key):
                    out[re.sub(pattern, target, key)] = value
                    break
            else:
                if not key.endswith("position_ids"):  # a non-persistent index, rebuilt by timm
                    raise HFImportError(f"EoMT tensor {key!r} {tuple(value.shape)} has no counterpart")
    for target, (order, pieces) in packed.items():
        _require(set(pieces) == set(order), f"{target}: parts {sorted(pieces)} of {list(order)}")
        out[target] = torch.cat([pieces[p] for p in order])
    return out


def config_overrides(hf_config, preprocessor: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """maskformer_d2 config values (``"MODEL.X.Y": value``) equivalent to a HF ``EomtConfig``.

    Raises:
        HFImportError: a setting maskformer_d2 cannot express, named in the message.
    """
    c = hf_config
    _require(c.hidden_act == "gelu", f"hidden_act {c.hidden_act!r}: only 'gelu'")
    _require(float(c.mlp_ratio) == 4, f"mlp_ratio {c.mlp_ratio}: only 4 (DINOv2)")
    _require(int(c.num_register_tokens) == 4, f"num_register_tokens {c.num_register_tokens}: only 4")
    size = int(c.image_size) if not isinstance(c.image_size, (list, tuple)) else int(c.image_size[0])
    name = _TIMM_NAMES.get(int(c.hidden_size), _TIMM_NAMES[1536 if c.use_swiglu_ffn else 384])
    _require(bool(c.use_swiglu_ffn) == name.startswith("vit_giant"),
             f"use_swiglu_ffn={c.use_swiglu_ffn} with hidden_size {c.hidden_size}: DINOv2 uses SwiGLU "
             "in its giant model only")
    split = bool((preprocessor or {}).get("do_split_image", False))
    out: Dict[str, Any] = {
        "MODEL.META_ARCHITECTURE": "EoMT",
        "MODEL.BACKBONE.NAME": "EoMTViT",
        "MODEL.WEIGHTS": "",
        "INPUT.FORMAT": "RGB",
        "MODEL.EOMT.BACKBONE_NAME": name,
        "MODEL.EOMT.PATCH_SIZE": int(c.patch_size),
        "MODEL.EOMT.IMG_SIZE": [size, size],
        "MODEL.EOMT.EMBED_DIM": int(c.hidden_size),
        "MODEL.EOMT.DEPTH": int(c.num_hidden_layers),
        "MODEL.EOMT.NUM_HEADS": int(c.num_attention_heads),
        "MODEL.EOMT.NUM_BLOCKS": int(c.num_blocks),
        "MODEL.EOMT.TEST.SLIDING_WINDOW": split,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": int(c.num_labels),
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": int(c.num_queries),
        "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": float(c.no_object_weight),
        "MODEL.MASK_FORMER.CLASS_WEIGHT": float(c.class_weight),
        "MODEL.MASK_FORMER.MASK_WEIGHT": float(c.mask_weight),
        "MODEL.MASK_FORMER.DICE_WEIGHT": float(c.dice_weight),
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": int(c.train_num_points),
        "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": float(c.oversample_ratio),
        "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": float(c.importance_sample_ratio),
        "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.8,  # the official evaluation's
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.8,
    }
    out.update(_preprocessor_overrides(preprocessor))
    # the official evaluation: short side to the window (semantic), else long side to the input
    out.update({"INPUT.MIN_SIZE_TEST": size, "INPUT.MAX_SIZE_TEST": 4 * size if split else size})
    out.update(_task_overrides(hf_config))
    if split:
        out.update({"MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True, "MODEL.MASK_FORMER.TEST.INSTANCE_ON": False,
                    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False})
    return out


def config_from_hf(hf_config, preprocessor: Optional[Dict[str, Any]] = None) -> CfgNode:
    """A full maskformer_d2 config for a HF EoMT."""
    return _cfg_from_overrides(config_overrides(hf_config, preprocessor))


def import_hf_eomt(name_or_path: str, output_dir: str) -> Tuple[str, str]:
    """Convert a HF EoMT (a ``save_pretrained`` folder or a hub id already in the HF cache) into
    ``output_dir/model_final.safetensors`` and ``output_dir/config.yaml``.

    Returns:
        (weights path, config path).
    """
    from transformers import AutoConfig, EomtForUniversalSegmentation

    hf_config = AutoConfig.from_pretrained(name_or_path)
    if hf_config.model_type != "eomt":
        raise HFImportError(f"a {hf_config.model_type!r} model, not an EoMT")
    model = EomtForUniversalSegmentation.from_pretrained(name_or_path, config=hf_config)
    cfg = config_from_hf(model.config, _read_preprocessor(name_or_path))
    return _write_import(convert_state_dict(model.state_dict()), cfg, name_or_path, output_dir)
