"""What the Hugging Face import tests (MaskFormer and Mask2Former) share: small seeded HF models with
non-trivial weights, our model loaded strictly from a conversion, and the two ways of comparing
outputs (head on normalised pixels; full meta-architecture on a 0..255 image after a folder import).

Import it after ``pytest.importorskip("transformers")``.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from torch import nn
from transformers import ResNetConfig

from maskformer_d2 import add_maskformer_config
from maskformer_d2.checkpoint import MaskFormerCheckpointer

STAGES = ["stage1", "stage2", "stage3", "stage4"]
# the image processor written next to the model: not ImageNet's statistics, test sizes 64..128
PROCESSOR_MEAN, PROCESSOR_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def resnet50_config() -> ResNetConfig:
    """A narrow ResNet-50 (bottleneck blocks, detectron2's standard depths)."""
    return ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 6, 3],
                        layer_type="bottleneck", out_features=STAGES)


def label_fields(labels: Optional[List[str]]) -> Dict[str, Dict]:
    """HF config fields naming the classes ``labels`` (none: HF's ``LABEL_i`` defaults)."""
    return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}


def seeded_model(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under seed 0, in eval mode, with all weights non-trivial (HF zero-inits some):
    every parameter perturbed, BatchNorm statistics away from 0 / 1."""
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model


def ours_from(cfg: CfgNode, state=None, weights=None) -> nn.Module:
    """Our model from ``cfg`` on the CPU, loaded strictly (every key and shape must fit) from a
    converted ``state`` dict or a ``weights`` file, returning the auxiliary predictions too."""
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    checkpointer = MaskFormerCheckpointer(model)
    if weights is not None:
        checkpointer.load(weights)
    else:
        checkpointer._loading = "converted"
        checkpointer._load_model({"model": dict(state)})
    model.sem_seg_head.predictor.aux_outputs_in_eval = True  # as HF's output_auxiliary_logits
    return model


def head_outputs(hf: nn.Module, ours: nn.Module, height: int, width: int) -> Tuple[Dict, object]:
    """Our head's outputs and HF's on the same seeded (1, 3, height, width) ``pixel_values``
    (HF's input is already normalised, so ours skips the meta-architecture's normalisation)."""
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        expected = hf(pixel_values=pixel_values)
        got = ours.sem_seg_head(ours.backbone(pixel_values))
    return got, expected


def folder_round_trip(tmp_path: Path, build_hf: Callable[[List[str]], nn.Module], processor_class, import_fn
                      ) -> Tuple[CfgNode, Dict, object]:
    """Build a HF model with the class names of the built-in shapes panoptic dataset, save it with an
    image processor (``PROCESSOR_MEAN/STD``, test sizes 64..128), convert the folder with ``import_fn``
    and check the config it writes: weights, PIXEL_MEAN/STD (HF's x255), test sizes, datasets. Then
    run one RGB 0..255 image through the full meta-architecture of that config.

    Args:
        build_hf: class names -> seeded HF model.

    Returns:
        the written config, our head's outputs (captured by a hook), and HF's outputs on the image
        normalised as its image processor does.
    """
    hf = build_hf(list(MetadataCatalog.get("shapes_panoptic_train").stuff_classes))
    hf.save_pretrained(tmp_path / "hf")
    processor_class(image_mean=PROCESSOR_MEAN, image_std=PROCESSOR_STD,
                    size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(tmp_path / "hf")
    weights, config = import_fn(str(tmp_path / "hf"), str(tmp_path / "out"))

    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(config)
    assert cfg.MODEL.WEIGHTS == weights and weights.endswith("model_final.safetensors")
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx([127.5, 102.0, 76.5])  # HF mean / rescale_factor
    assert cfg.MODEL.PIXEL_STD == pytest.approx([51.0, 63.75, 76.5])
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (64, 128)
    # the class names are those of the built-in shapes dataset: its metadata names the classes
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("shapes_panoptic_train",), ("shapes_panoptic_val",))
    ours = ours_from(cfg, weights=cfg.MODEL.WEIGHTS)

    image = torch.randint(0, 256, (3, 64, 96), generator=torch.Generator().manual_seed(3)).float()  # RGB 0..255
    captured: Dict = {}
    ours.sem_seg_head.register_forward_hook(lambda module, args, output: captured.update(output))
    with torch.no_grad():
        ours([{"image": image, "height": 64, "width": 96}])
        mean, std = torch.tensor(PROCESSOR_MEAN)[:, None, None], torch.tensor(PROCESSOR_STD)[:, None, None]
        pixel_values = (image / 255 - mean) / std  # what HF's image processor computes
        expected = hf(pixel_values=pixel_values[None])
    return cfg, captured, expected
