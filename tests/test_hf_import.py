"""Hugging Face MaskFormer -> maskformer_d2: same weights, same class and mask logits.

Small random-weight ``MaskFormerForInstanceSegmentation`` models (Swin, ResNet basic-block and
bottleneck backbones) are converted; our model, built from the generated config, must load the
weights strictly and reproduce HF's ``class_queries_logits`` / ``masks_queries_logits``.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig  # noqa: E402
from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig  # noqa: E402

from maskformer_d2 import add_maskformer_config  # noqa: E402
from maskformer_d2.checkpoint import MaskFormerCheckpointer  # noqa: E402
from maskformer_d2.convert.hf import (  # noqa: E402
    HFImportError, config_from_hf, convert_state_dict, import_hf_maskformer,
)

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert-hf-maskformer-to-d2.py"
STAGES = ["stage1", "stage2", "stage3", "stage4"]
BACKBONES = {
    # window 3 on 64x96 / 72x100 inputs: HF and ours both pad feature maps to whole windows
    "swin": lambda: SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=3,
                               image_size=64, drop_path_rate=0.0, out_features=STAGES),
    # detectron2 only builds the standard depths; R-18 needs 64 res2 channels
    "resnet18": lambda: ResNetConfig(embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                     layer_type="basic", out_features=STAGES),
    "resnet50": lambda: ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 6, 3],
                                     layer_type="bottleneck", out_features=STAGES),
}


def hf_maskformer(backbone: str, labels=None) -> MaskFormerForInstanceSegmentation:
    """A seeded, eval-mode HF MaskFormer whose weights are all non-trivial (HF zero-inits some)."""
    torch.manual_seed(0)
    decoder = MaskFormerDetrConfig(d_model=32, decoder_layers=2, decoder_ffn_dim=64, decoder_attention_heads=4,
                                   num_queries=5, encoder_layers=0, dropout=0.0)
    extra = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    config = MaskFormerConfig(backbone_config=BACKBONES[backbone](), decoder_config=decoder, fpn_feature_size=32,
                              mask_feature_size=32, num_labels=len(labels) if labels else 7, **extra)
    model = MaskFormerForInstanceSegmentation(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model


def ours_from(cfg, state=None, weights=None):
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    checkpointer = MaskFormerCheckpointer(model)  # strict: every key and shape must fit
    if weights is not None:
        checkpointer.load(weights)
    else:
        checkpointer._loading = "converted"
        checkpointer._load_model({"model": dict(state)})
    return model


def assert_same_logits(hf, ours, height, width):
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        expected = hf(pixel_values=pixel_values)
        got = ours.sem_seg_head(ours.backbone(pixel_values))  # HF's input is already normalised
    assert got["pred_logits"].shape == expected.class_queries_logits.shape == (1, 5, 8)
    assert got["pred_masks"].shape == expected.masks_queries_logits.shape == (1, 5, (height + 3) // 4, (width + 3) // 4)
    assert expected.masks_queries_logits.abs().max() > 1.0  # not a degenerate all-zero comparison
    assert torch.allclose(got["pred_logits"], expected.class_queries_logits, atol=1e-4, rtol=0)
    assert torch.allclose(got["pred_masks"], expected.masks_queries_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_converted_model_reproduces_hf_logits(backbone):
    hf = hf_maskformer(backbone)
    cfg = config_from_hf(hf.config)
    ours = ours_from(cfg, convert_state_dict(hf.state_dict(), hf.config))
    assert_same_logits(hf, ours, 64, 96)
    assert_same_logits(hf, ours, 72, 100)  # not a multiple of 32: both pad inside the backbone alike


def test_generated_config_matches_hf_config():
    hf = hf_maskformer("resnet50")
    cfg = config_from_hf(hf.config)
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS,
            cfg.MODEL.RESNETS.WIDTH_PER_GROUP, cfg.MODEL.RESNETS.STRIDE_IN_1X1) == (50, 16, 32, 8, False)
    head = cfg.MODEL.SEM_SEG_HEAD
    assert (head.NUM_CLASSES, head.CONVS_DIM, head.MASK_DIM) == (7, 32, 32)
    mf = cfg.MODEL.MASK_FORMER
    assert (mf.HIDDEN_DIM, mf.NUM_OBJECT_QUERIES, mf.NHEADS, mf.DIM_FEEDFORWARD, mf.DEC_LAYERS) == (32, 5, 4, 64, 2)
    assert (mf.TRANSFORMER_IN_FEATURE, cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME) == ("res5", "BasePixelDecoder")
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530] and cfg.INPUT.FORMAT == "RGB"


def test_save_pretrained_folder_round_trip(tmp_path):
    """import_hf_maskformer on a save_pretrained folder: the YAML + weights it writes give HF's
    logits through the full meta-architecture, normalisation included."""
    from transformers import MaskFormerImageProcessor

    labels = list(MetadataCatalog.get("shapes_panoptic_train").stuff_classes)
    hf = hf_maskformer("swin", labels)
    hf.save_pretrained(tmp_path / "hf")
    MaskFormerImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3],
                             size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(tmp_path / "hf")
    weights, config = import_hf_maskformer(str(tmp_path / "hf"), str(tmp_path / "out"))

    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(config)
    assert cfg.MODEL.WEIGHTS == weights
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx([127.5, 102.0, 76.5])  # HF mean / rescale_factor
    assert cfg.MODEL.PIXEL_STD == pytest.approx([51.0, 63.75, 76.5])
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (64, 128)
    # the class names are those of the built-in shapes dataset: its metadata names the classes,
    # and the panoptic split's thing classes make --task panoptic possible
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("shapes_panoptic_train",), ("shapes_panoptic_val",))
    assert cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON is False  # shapes also has a semantic-only split
    ours = ours_from(cfg, weights=cfg.MODEL.WEIGHTS)

    image = torch.randint(0, 256, (3, 64, 96), generator=torch.Generator().manual_seed(3)).float()  # RGB 0..255
    captured = {}
    ours.sem_seg_head.register_forward_hook(lambda module, args, output: captured.update(output))
    with torch.no_grad():
        ours([{"image": image, "height": 64, "width": 96}])
        mean, std = torch.tensor([0.5, 0.4, 0.3])[:, None, None], torch.tensor([0.2, 0.25, 0.3])[:, None, None]
        pixel_values = (image / 255 - mean) / std  # what HF's image processor computes
        expected = hf(pixel_values=pixel_values[None])
    assert torch.allclose(captured["pred_logits"], expected.class_queries_logits, atol=1e-4, rtol=0)
    assert torch.allclose(captured["pred_masks"], expected.masks_queries_logits, atol=1e-4, rtol=0)


def test_cli_writes_weights_and_config(tmp_path):
    hf = hf_maskformer("resnet18")
    hf.save_pretrained(tmp_path / "hf")
    result = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "hf"), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote {tmp_path / 'out' / 'model_final.safetensors'}",
                                          f"wrote {tmp_path / 'out' / 'config.yaml'}"]
    assert "match no registered dataset" in result.stderr  # LABEL_0.. names: no metadata to borrow
    result = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "nothing"), str(tmp_path / "o2")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'nothing'}: cannot load a Hugging Face MaskFormer")


def test_unsupported_variants_are_named():
    hf = hf_maskformer("resnet18")
    hf.config.backbone_config.depths = [1, 1, 1, 1]
    with pytest.raises(HFImportError, match=r"ResNet basic with depths \[1, 1, 1, 1\]: detectron2 builds only"):
        config_from_hf(hf.config)
    state = dict(hf_maskformer("resnet18").state_dict())
    state["model.pixel_level_module.encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(HFImportError, match=r"1 Hugging Face tensors have no maskformer_d2 counterpart "
                                            r"\(e\.g\. model\.pixel_level_module\.encoder\.extra\.weight\)"):
        convert_state_dict(state, hf.config)
