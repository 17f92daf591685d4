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
import _hf_tiny as tiny  # noqa: E402
from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig  # noqa: E402
from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig  # noqa: E402

from maskformer_d2.convert.hf import HFImportError, config_from_hf, convert_state_dict, import_hf_maskformer  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert-hf-maskformer-to-d2.py"
BACKBONES = {
    # window 3 on 64x96 / 72x100 inputs: HF and ours both pad feature maps to whole windows
    "swin": lambda: SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=3,
                               image_size=64, drop_path_rate=0.0, out_features=tiny.STAGES),
    # detectron2 only builds the standard depths; R-18 needs 64 res2 channels
    "resnet18": lambda: ResNetConfig(embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                     layer_type="basic", out_features=tiny.STAGES),
    "resnet50": tiny.resnet50_config,
}


def hf_maskformer(backbone: str, labels=None) -> MaskFormerForInstanceSegmentation:
    """A seeded, eval-mode HF MaskFormer whose weights are all non-trivial (HF zero-inits some)."""
    decoder = MaskFormerDetrConfig(d_model=32, decoder_layers=2, decoder_ffn_dim=64, decoder_attention_heads=4,
                                   num_queries=5, encoder_layers=0, dropout=0.0)
    config = MaskFormerConfig(backbone_config=BACKBONES[backbone](), decoder_config=decoder, fpn_feature_size=32,
                              mask_feature_size=32, num_labels=len(labels) if labels else 7,
                              **tiny.label_fields(labels))
    return tiny.seeded_model(lambda: MaskFormerForInstanceSegmentation(config))


def assert_same_logits(hf, ours, height, width):
    got, expected = tiny.head_outputs(hf, ours, height, width)
    assert got["pred_logits"].shape == expected.class_queries_logits.shape == (1, 5, 8)
    assert got["pred_masks"].shape == expected.masks_queries_logits.shape == (1, 5, (height + 3) // 4, (width + 3) // 4)
    assert expected.masks_queries_logits.abs().max() > 1.0  # not a degenerate all-zero comparison
    assert torch.allclose(got["pred_logits"], expected.class_queries_logits, atol=1e-4, rtol=0)
    assert torch.allclose(got["pred_masks"], expected.masks_queries_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_converted_model_reproduces_hf_logits(backbone):
    hf = hf_maskformer(backbone)
    cfg = config_from_hf(hf.config)
    ours = tiny.ours_from(cfg, convert_state_dict(hf.state_dict(), hf.config))
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

    cfg, got, expected = tiny.folder_round_trip(tmp_path, lambda labels: hf_maskformer("swin", labels),
                                                MaskFormerImageProcessor, import_hf_maskformer)
    # the shapes panoptic split's thing classes make --task panoptic possible, but it is not the default
    assert cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON is False  # shapes also has a semantic-only split
    assert torch.allclose(got["pred_logits"], expected.class_queries_logits, atol=1e-4, rtol=0)
    assert torch.allclose(got["pred_masks"], expected.masks_queries_logits, atol=1e-4, rtol=0)


@pytest.mark.slow
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
