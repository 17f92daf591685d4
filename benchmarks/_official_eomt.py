"""The official EoMT (tue-mps/eomt) as a benchmark model: built from one of our EoMT configs
(ours mirror the official hyper-parameters; the official code has no detectron2 config), loading
our random weights under the official names, and run on detectron2-style inputs through the
official evaluation code of the config's task.

What is timed is the official ``eval_step`` of ``MaskClassificationPanoptic`` /
``MaskClassificationInstance`` / ``MaskClassificationSemantic`` (resize and pad or sliding
windows, the network, the post-processing) with the metric update replaced by keeping its
predictions, and with the network's output cut to its final prediction: the official evaluation
post-processes the prediction of every query block (for its per-block metrics), which a user
running the model would not, so the official time here is the smaller one.

The official modules are imported as ``scripts/make_eomt_reference.py`` imports them (its
Lightning / torchmetrics / wandb imports stood in for by empty modules).
"""
import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

__all__ = ["OfficialEoMT", "is_official_eomt_tree", "official_task"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_official_eomt_tree(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "models", "eomt.py"))


def official_task(cfg) -> str:
    """The task whose official evaluation module runs the config: semantic with sliding windows
    or when only semantic output is on, else panoptic, else instance."""
    t = cfg.MODEL.MASK_FORMER.TEST
    if cfg.MODEL.EOMT.TEST.SLIDING_WINDOW or not (t.PANOPTIC_ON or t.INSTANCE_ON):
        return "semantic"
    return "panoptic" if t.PANOPTIC_ON else "instance"


def _reference_script():
    """scripts/make_eomt_reference.py as a module: how it imports the official code, its dummy target."""
    spec = importlib.util.spec_from_file_location(
        "make_eomt_reference", os.path.join(REPO, "scripts", "make_eomt_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OfficialEoMT(nn.Module):
    """The official network and evaluation module for ``cfg`` (our EoMT config), called like a
    detectron2 model in eval mode: ``model([{"image": (3, H, W) 0..255, ...}])`` -> one dict per
    image with "sem_seg" (K, H, W) scores (semantic) or "panoptic_classes" (H, W) class per pixel,
    -1 where no segment (panoptic) or "instance_scores" (instance)."""

    def __init__(self, tree: str, cfg, weights: Optional[str] = None):
        super().__init__()
        import timm

        from maskformer_d2.data.metadata import thing_ids_from_metadata
        from maskformer_d2.modeling.eomt.official_keys import rename_to_official_eomt_keys
        self.reference = _reference_script()
        official = self.reference.load_official(Path(tree))
        e, mf = cfg.MODEL.EOMT, cfg.MODEL.MASK_FORMER
        img_size = tuple(e.IMG_SIZE)
        encoder = official.vit.ViT(img_size=img_size, patch_size=e.PATCH_SIZE, backbone_name=e.BACKBONE_NAME,
                                   ckpt_path="(random weights)")
        overrides = {k: v for k, v in (("embed_dim", e.EMBED_DIM), ("depth", e.DEPTH), ("num_heads", e.NUM_HEADS))
                     if v > 0}
        if overrides:  # a size the timm name does not have (e.g. the shapes recipe)
            encoder.backbone = timm.create_model(e.BACKBONE_NAME, pretrained=False, img_size=img_size,
                                                 patch_size=e.PATCH_SIZE, num_classes=0, **overrides)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        network = official.eomt.EoMT(encoder, num_classes=num_classes, num_q=mf.NUM_OBJECT_QUERIES,
                                     num_blocks=e.NUM_BLOCKS, masked_attn_enabled=e.MASKED_ATTN_ENABLED)
        self.task = official_task(cfg)
        common = dict(network=network, img_size=img_size, num_classes=num_classes,
                      attn_mask_annealing_enabled=False, mask_thresh=mf.TEST.OBJECT_MASK_THRESHOLD,
                      overlap_thresh=mf.TEST.OVERLAP_THRESHOLD)
        if self.task == "panoptic":
            things = thing_ids_from_metadata(cfg.DATASETS.TRAIN, load_if_needed=True)
            self.module = official.panoptic.MaskClassificationPanoptic(
                stuff_classes=[c for c in range(num_classes) if c not in things], **common)
        elif self.task == "instance":
            self.module = official.instance.MaskClassificationInstance(
                eval_top_k_instances=cfg.TEST.DETECTIONS_PER_IMAGE, **common)
        else:
            self.module = official.semantic.MaskClassificationSemantic(**common)
        if weights:
            state = torch.load(weights, weights_only=True)
            missing, unexpected = network.load_state_dict(
                {k[len("network."):]: v for k, v in rename_to_official_eomt_keys(state["model"]).items()},
                strict=False)
            if unexpected or [k for k in missing if not k.startswith("encoder.pixel_")]:
                raise KeyError(f"official EoMT: missing {missing}, unexpected {unexpected}")
        # the evaluation sees the final prediction only (see the module docstring)
        forward = network.forward
        network.forward = lambda x: tuple(per_block[-1:] for per_block in forward(x))
        self.found: List = []
        update = {"panoptic": "update_metrics_panoptic", "instance": "update_metrics_instance",
                  "semantic": "update_metrics_semantic"}[self.task]
        setattr(self.module, update, lambda preds, *args: self.found.append(preds))
        self.module.eval()

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        images = tuple(x["image"].round().clamp(0, 255).to(torch.uint8) for x in batched_inputs)
        targets = tuple(self.reference.dummy_target(*image.shape[-2:]) for image in images)
        self.found.clear()
        self.module.eval_step((images, targets), 0, "val")
        (preds,) = self.found
        if self.task == "semantic":
            return [{"sem_seg": p} for p in preds]
        if self.task == "panoptic":
            return [{"panoptic_classes": torch.where(p[..., 1] >= 0, p[..., 0], -1)} for p in preds]
        return [{"instance_scores": p["scores"]} for p in preds]
