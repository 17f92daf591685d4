"""State-dict names of the official EoMT checkpoints (``pytorch_model.bin`` of the model zoo,
Lightning ``state_dict``) and ours.

The official files hold the LightningModule's entries: ``network.encoder.backbone.*`` (the timm
ViT), ``network.q`` / ``class_head`` / ``mask_head`` / ``upscale`` (the head),
``network.attn_mask_probs`` (the annealing state), ``network.encoder.pixel_mean/std`` (ImageNet
statistics in [0, 1]; ours come from ``MODEL.PIXEL_MEAN/STD``) and possibly
``criterion.empty_weight``. Only names change: no tensor is reshaped.
"""
from typing import Dict, Mapping

__all__ = ["is_official_eomt_state_dict", "rename_official_eomt_keys", "rename_to_official_eomt_keys"]

# official prefix -> ours, first match wins
_PREFIXES = (
    ("network.encoder.backbone.", "backbone.vit."),
    ("network.q.", "sem_seg_head.query_embed."),
    ("network.class_head.", "sem_seg_head.class_embed."),
    ("network.mask_head.", "sem_seg_head.mask_embed."),
    ("network.upscale.", "sem_seg_head.upscale."),
    ("network.attn_mask_probs", "mask_annealing.probs"),
)
_DROPPED = ("network.encoder.pixel_mean", "network.encoder.pixel_std")


def is_official_eomt_state_dict(state_dict: Mapping[str, object]) -> bool:
    """Whether the entries are named the official way (``network.*``)."""
    return any(k.startswith("network.encoder.backbone.") for k in state_dict)


def rename_official_eomt_keys(state_dict: Mapping[str, object]) -> Dict[str, object]:
    """The same entries under our names; official-only entries (pixel statistics) are dropped,
    names that are neither official nor ours pass through (and are reported by the loader)."""
    renamed = {}
    for key, value in state_dict.items():
        if key in _DROPPED:
            continue
        for old, new in _PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


def rename_to_official_eomt_keys(state_dict: Mapping[str, object]) -> Dict[str, object]:
    """Our entries under the official names (the inverse of :func:`rename_official_eomt_keys`, for
    running the official code on our weights); entries the official model has no place for are
    left out."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in _PREFIXES:
            if key.startswith(new):
                renamed[old + key[len(new):]] = value
                break
    return renamed
