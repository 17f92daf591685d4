"""Test-time augmentation for semantic segmentation: multi-scale + flip, probabilities averaged."""
from typing import Dict, List

import torch
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA
from torch import nn

from ..data.io import read_image

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a model returning "sem_seg"; ``TEST.AUG.{MIN_SIZES,MAX_SIZE,FLIP}`` set the views."""

    def __init__(self, cfg, model: nn.Module, batch_size: int = 1):
        super().__init__()
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.tta_mapper = DatasetMapperTTA(cfg)
        self.input_format = cfg.INPUT.FORMAT
        self.batch_size = batch_size

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        return [self._inference_one(x) for x in batched_inputs]

    def _inference_one(self, x: Dict) -> Dict:
        x = dict(x)
        if "image" not in x:
            x["image"] = torch.from_numpy(read_image(x["file_name"], self.input_format).transpose(2, 0, 1).copy())
        height, width = x.get("height", x["image"].shape[1]), x.get("width", x["image"].shape[2])
        augmented = self.tta_mapper({**x, "height": height, "width": width})
        total = None
        for i in range(0, len(augmented), self.batch_size):
            chunk = augmented[i : i + self.batch_size]
            with torch.no_grad():
                outputs = self.model([{k: v for k, v in a.items() if k != "transforms"} for a in chunk])
            for a, out in zip(chunk, outputs):
                probs = out["sem_seg"]  # (K, height, width)
                if any(isinstance(t, HFlipTransform) for t in a["transforms"].transforms):
                    probs = probs.flip(dims=[2])
                total = probs if total is None else total + probs
        return {"sem_seg": total / len(augmented)}
