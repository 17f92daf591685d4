"""Hugging Face Mask2Former -> maskformer_d2: official tensor names, same class and mask logits.

Small random-weight ``Mask2FormerForUniversalSegmentation`` models (Swin with the dims of the
reference case ``m2f_panoptic_swin_small``, and a ResNet-50 bottleneck backbone) are converted;
the tensor names and shapes must be the official checkpoint's, and our model, built from the
generated config, must load them strictly and reproduce HF's final and auxiliary class / mask logits.
"""
import re
import runpy
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch

transformers = pytest.importorskip("transformers")
import _hf_tiny as tiny  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, MaskFormerConfig, SwinConfig  # noqa: E402

from maskformer_d2.convert.hf_mask2former import (  # noqa: E402
    HFImportError,
    config_from_hf,
    config_overrides,
    convert_state_dict,
    import_hf_mask2former,
)

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert-hf-mask2former-to-d2.py"
CASE = "mask2former/cases/m2f_panoptic_swin_small"
BACKBONES = {
    # the reference case's Swin: embed 32, depths [1, 1, 2, 1], heads [1, 2, 4, 8], window 7
    "swin": lambda: SwinConfig(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7,
                               drop_path_rate=0.0, out_features=tiny.STAGES),
    "resnet50": tiny.resnet50_config,
}
NUM_QUERIES, DEC_LAYERS = 16, 4


def hf_config(backbone: str, labels: Optional[List[str]] = None, **overrides) -> Mask2FormerConfig:
    """The reference case's head: hidden / convs / mask dims 64, FFN 128, 2 encoder layers, 16 queries,
    DEC_LAYERS 4 (8 heads), 133 classes unless ``labels`` are given."""
    kwargs: Dict[str, Any] = {
        "backbone_config": BACKBONES[backbone](), "feature_size": 64, "mask_feature_size": 64, "hidden_dim": 64,
        "encoder_layers": 2, "decoder_layers": DEC_LAYERS, "dim_feedforward": 128, "num_queries": NUM_QUERIES,
        "num_labels": len(labels) if labels else 133, "output_auxiliary_logits": True,
    }
    kwargs.update(tiny.label_fields(labels), **overrides)
    return Mask2FormerConfig(**kwargs)


def hf_mask2former(backbone: str, labels: Optional[List[str]] = None) -> Mask2FormerForUniversalSegmentation:
    """A seeded, eval-mode HF Mask2Former whose weights are all non-trivial (HF zero-inits some)."""
    config = hf_config(backbone, labels)
    return tiny.seeded_model(lambda: Mask2FormerForUniversalSegmentation(config))


@pytest.fixture(scope="module")
def hf_models() -> Dict[str, Mask2FormerForUniversalSegmentation]:
    return {name: hf_mask2former(name) for name in BACKBONES}


def predictions(hf_output) -> List[Dict[str, torch.Tensor]]:
    """HF's auxiliary predictions then the final one, under our names."""
    aux = [{"pred_logits": a["class_queries_logits"], "pred_masks": a["masks_queries_logits"]}
           for a in hf_output.auxiliary_logits]
    return [*aux, {"pred_logits": hf_output.class_queries_logits, "pred_masks": hf_output.masks_queries_logits}]


def assert_same_predictions(got: Dict, expected: List[Dict[str, torch.Tensor]], tol: float = 1e-4) -> None:
    """Final and auxiliary class / mask logits of ours (``got``) equal HF's within ``tol``."""
    ours = [*got["aux_outputs"], {"pred_logits": got["pred_logits"], "pred_masks": got["pred_masks"]}]
    assert len(ours) == len(expected) == DEC_LAYERS
    for i, (a, b) in enumerate(zip(ours, expected, strict=True)):
        for key in ("pred_logits", "pred_masks"):
            assert a[key].shape == b[key].shape, (i, key)
            diff = (a[key] - b[key]).abs().max().item()
            assert diff <= tol, f"prediction {i} {key}: max difference {diff:.2e}"


def normalised(names) -> set:
    """Key names with every layer / block / level index replaced by N."""
    return {re.sub(r"\.\d+(?=\.|$)", ".N", n) for n in names}


# ----------------------------------------------------------------------------- tensor names
def test_swin_keys_equal_the_official_reference_checkpoint(hf_models, reference_dir):
    """Same dims as the official case -> exactly the official checkpoint's names, shapes and dtypes
    (criterion.empty_weight included), and the relative position indices HF no longer saves."""
    hf = hf_models["swin"]
    state = convert_state_dict(hf.state_dict(), hf.config)
    official = torch.load(reference_dir / CASE / "weights.pth", map_location="cpu", weights_only=True)
    assert sorted(state) == sorted(official)
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == \
           {k: (tuple(v.shape), v.dtype) for k, v in official.items()}
    for key in (k for k in official if k.endswith("relative_position_index")):
        assert torch.equal(state[key], official[key]), key
    # the self-attention's packed in_proj is HF's q, k, v in that order
    layer = "model.transformer_module.decoder.layers.1.self_attn."
    packed = state["sem_seg_head.predictor.transformer_self_attention_layers.1.self_attn.in_proj_weight"]
    hf_state = hf.state_dict()
    assert torch.equal(packed, torch.cat([hf_state[layer + f"{p}_proj.weight"] for p in "qkv"]))


def test_transformers_4_swin_names_convert_alike(hf_models):
    """transformers 4 names the Swin tensors differently (``attention.self.query``, no ``swin.``
    prefix, saved ``relative_position_index``): same result."""
    hf = hf_models["swin"]
    renames = [(r"\.swin\.", "."), (r"attention\.([qkv])_proj", lambda m: "attention.self." + {
        "q": "query", "k": "key", "v": "value"}[m.group(1)]), (r"attention\.o_proj", "attention.output.dense"),
        (r"attention\.relative_position_bias\.", "attention.self."), (r"mlp\.fc1", "intermediate.dense"),
        (r"mlp\.fc2", "output.dense")]
    old = {}
    for key, value in hf.state_dict().items():
        old_key = key
        if key.startswith("model.pixel_level_module.encoder."):
            for pattern, repl in renames:
                old_key = re.sub(pattern, repl, old_key)
        old[old_key] = value
    new = convert_state_dict(hf.state_dict(), hf.config)
    for key in (k for k in new if k.endswith("relative_position_index")):
        hf_key = "model.pixel_level_module.encoder.encoder." + key[len("backbone."):].replace(
            "attn.", "attention.self.")
        old[hf_key] = new[key]
    converted = convert_state_dict(old, hf.config)
    assert sorted(converted) == sorted(new)
    assert all(torch.equal(converted[k], new[k]) for k in new)


def test_resnet_keys_follow_the_official_manifest(hf_models, reference_dir):
    """A ResNet-50 Mask2Former has the official R50 panoptic model's tensor names (up to layer counts)."""
    hf = hf_models["resnet50"]
    state = convert_state_dict(hf.state_dict(), hf.config)
    manifest = reference_dir / "mask2former/manifests/m2f_coco_panoptic_R50.keys.txt"
    official = [line.split("\t")[0] for line in manifest.read_text().splitlines() if line and not line.startswith("#")]
    assert normalised(state) == normalised(official)
    layers = {k for k in state if k.startswith("sem_seg_head.predictor.transformer_ffn_layers.")}
    assert len(layers) == 6 * (DEC_LAYERS - 1)  # HF's decoder_layers counts like DEC_LAYERS


# ----------------------------------------------------------------------------- same outputs
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_converted_model_reproduces_hf_logits(hf_models, backbone):
    hf = hf_models[backbone]
    ours = tiny.ours_from(config_from_hf(hf.config), convert_state_dict(hf.state_dict(), hf.config))
    for height, width in ((64, 96), (72, 100)):  # 72x100: not a multiple of 32, both pad alike
        got, hf_output = tiny.head_outputs(hf, ours, height, width)
        expected = predictions(hf_output)
        assert expected[-1]["pred_masks"].shape == (1, NUM_QUERIES, (height + 3) // 4, (width + 3) // 4)
        assert expected[-1]["pred_masks"].abs().max() > 1.0  # not a degenerate all-zero comparison
        hidden = (expected[0]["pred_masks"] < 0).float().mean()  # the first attention mask hides
        assert 0.1 < hidden < 0.9  # part of the image: masked attention is exercised
        assert_same_predictions(got, expected)


# ----------------------------------------------------------------------------- config
def test_generated_config_matches_hf_config():
    cfg = config_from_hf(hf_config("resnet50", encoder_layers=3, decoder_layers=7, pre_norm=True))
    head, mf = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS) == \
           ("build_resnet_backbone", 50, 32)
    assert (head.PIXEL_DECODER_NAME, head.NUM_CLASSES, head.CONVS_DIM, head.MASK_DIM, head.TRANSFORMER_ENC_LAYERS) == \
           ("MSDeformAttnPixelDecoder", 133, 64, 64, 3)
    assert list(head.IN_FEATURES) == ["res2", "res3", "res4", "res5"]
    assert list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES) == ["res3", "res4", "res5"]
    assert (mf.TRANSFORMER_DECODER_NAME, mf.TRANSFORMER_IN_FEATURE) == \
           ("MultiScaleMaskedTransformerDecoder", "multi_scale_pixel_decoder")
    assert (mf.HIDDEN_DIM, mf.NUM_OBJECT_QUERIES, mf.NHEADS, mf.DIM_FEEDFORWARD, mf.DEC_LAYERS, mf.PRE_NORM) == \
           (64, 16, 8, 128, 7, True)  # DEC_LAYERS = decoder_layers: both build 6 layers
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT, mf.TRAIN_NUM_POINTS) == \
           (2.0, 5.0, 5.0, 0.1, 112 * 112)
    assert (mf.TEST.OVERLAP_THRESHOLD, mf.TEST.OBJECT_MASK_THRESHOLD) == (0.8, 0.8)
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530] and cfg.INPUT.FORMAT == "RGB"


def test_output_tasks_follow_the_class_names():
    """All COCO panoptic classes -> the panoptic config's tasks; COCO's thing classes -> instance
    only; classes a semantic-only dataset also has -> semantic only."""
    def tasks(labels):
        out = config_overrides(hf_config("swin", labels))
        return out["DATASETS.TRAIN"], [out.get(f"MODEL.MASK_FORMER.TEST.{t}_ON") for t in ("SEMANTIC", "INSTANCE",
                                                                                            "PANOPTIC")]

    train, flags = tasks(list(MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg").stuff_classes))
    assert "panoptic" in train[0] and flags == [True, True, True]
    train, flags = tasks(list(MetadataCatalog.get("coco_2017_val").thing_classes))
    assert re.fullmatch(r"coco_20\d\d_train", train[0]) and flags == [False, True, False]  # not a panoptic one
    assert tasks(list(MetadataCatalog.get("shapes_instance_train").thing_classes)) == (("shapes_instance_train",),
                                                                                      [False, True, False])
    assert tasks(list(MetadataCatalog.get("shapes_panoptic_train").stuff_classes)) == (("shapes_panoptic_train",),
                                                                                      [None, None, None])


def test_unsupported_variants_are_named(hf_models):
    with pytest.raises(HFImportError, match=r"encoder_feedforward_dim 2048: the official pixel decoder is built "
                                            r"with 1024 only"):
        config_overrides(hf_config("swin", encoder_feedforward_dim=2048))
    config = hf_config("swin")
    config.backbone_config.out_features = ["stage2", "stage3", "stage4"]
    with pytest.raises(HFImportError, match=r"backbone out_features \['stage2', 'stage3', 'stage4'\]: only all 4"):
        config_overrides(config)
    hf = hf_models["resnet50"]
    state = dict(hf.state_dict())
    state["model.transformer_module.decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(HFImportError, match=r"1 Hugging Face tensors have no maskformer_d2 counterpart \(e\.g\. "
                                            r"model\.transformer_module\.decoder\.extra\.weight\); this Mask2Former"):
        convert_state_dict(state, hf.config)


# ----------------------------------------------------------------------------- files and command line
def test_save_pretrained_folder_round_trip(tmp_path):
    """import_hf_mask2former on a save_pretrained folder: the YAML + weights it writes give HF's
    logits through the full meta-architecture, normalisation included."""
    from transformers import Mask2FormerImageProcessor

    _, got, hf_output = tiny.folder_round_trip(tmp_path, lambda labels: hf_mask2former("swin", labels),
                                               Mask2FormerImageProcessor, import_hf_mask2former)
    assert_same_predictions(got, predictions(hf_output))


def test_cli_writes_weights_and_config_and_names_bad_sources(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    main = runpy.run_path(str(TOOL))["main"]
    hf = hf_mask2former("resnet50")
    hf.save_pretrained(tmp_path / "hf")
    assert main([str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'out' / 'model_final.safetensors'}",
                                                    f"wrote {tmp_path / 'out' / 'config.yaml'}"]

    def error_of(source: Path) -> str:
        assert main([str(source), str(tmp_path / "o2")]) == 1
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert error_of(tmp_path / "nothing").startswith(
        f"error: {tmp_path / 'nothing'}: cannot load a Hugging Face Mask2Former")
    MaskFormerConfig().save_pretrained(tmp_path / "maskformer")
    assert error_of(tmp_path / "maskformer") == (f"error: {tmp_path / 'maskformer'}: config.json: model_type: "
                                                 "'maskformer': a MaskFormer, not a Mask2Former; use "
                                                 "tools/convert-hf-maskformer-to-d2.py")
    # a checkpoint without some weights: HF would make them up at random
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    del tensors["class_predictor.weight"]
    save_file(tensors, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    assert error_of(tmp_path / "hf") == (f"error: {tmp_path / 'hf'}: model.safetensors: the checkpoint lacks 1 "
                                         "weights of the model (e.g. class_predictor.weight), which would be random")
