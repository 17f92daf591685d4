"""Specification of the sem-seg heads: pixel decoders, transformer predictor, MaskFormerHead and
the per-pixel baselines.

* parameter names and shapes equal the ``sem_seg_head.*`` entries of every official manifest;
* outputs have the documented shapes (tiny sizes: hidden 32, 4 queries);
* building blocks equal known values (sine encoding formula, torch's own transformer layers);
* with the official weights, outputs equal the official model's: tests/test_official_parity.py;
* pixel decoders and predictors are pluggable by name, and wrong names fail clearly.
"""
import ast
import math
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
from detectron2.config import CfgNode, configurable, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_sem_seg_head
from torch import nn
from torch.nn import functional as F

from maskformer_d2.config import add_maskformer_config
from maskformer_d2.modeling.heads import (
    MaskFormerHead,
    PerPixelBaselineHead,
    PerPixelBaselinePlusHead,
)
from maskformer_d2.modeling.pixel_decoder import (
    PIXEL_DECODER_REGISTRY,
    BasePixelDecoder,
    TransformerEncoderPixelDecoder,
    build_pixel_decoder,
)
from maskformer_d2.modeling.transformer_decoder import (
    MLP,
    PositionEmbeddingSine,
    Transformer,
    build_transformer_predictor,
)
from maskformer_d2.modeling.transformer_decoder.transformer import (
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)

FEATURES = ("res2", "res3", "res4", "res5")


def _shapes(channels: Sequence[int]) -> Dict[str, ShapeSpec]:
    """Backbone output shapes res2..res5 (strides 4..32)."""
    return {f: ShapeSpec(channels=c, stride=4 * 2**i) for i, (f, c) in enumerate(zip(FEATURES, channels))}


RESNET = _shapes((256, 512, 1024, 2048))  # R50, R101, R101c
SWIN_T = _shapes((96, 192, 384, 768))
SWIN_L = _shapes((192, 384, 768, 1536))


def _cfg(overrides: Sequence = ()) -> CfgNode:
    """The head part of the official Base-ADE20K-150 + maskformer_R50 config, plus overrides."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES", list(FEATURES),
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 255,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", 256,
            "MODEL.SEM_SEG_HEAD.MASK_DIM", 256,
            "MODEL.SEM_SEG_HEAD.NORM", "GN",
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "res5",
        ]
        + list(overrides)
    )
    return cfg


# ---------------------------------------------------------------- official manifests

PANOPTIC = [
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 133,
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "TransformerEncoderPixelDecoder",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 6,
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "transformer_encoder",
]
BASELINE_PLUS = [
    "MODEL.SEM_SEG_HEAD.NAME", "PerPixelBaselinePlusHead",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 150,
]
MANIFESTS = {
    "ade20k-150_maskformer_R50": (RESNET, []),
    "ade20k-150_maskformer_R101c": (RESNET, []),
    "cityscapes-19_maskformer_R101c": (RESNET, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 19]),
    "ade20k-150_maskformer_swin_tiny": (SWIN_T, []),
    "ade20k-150_maskformer_swin_large_IN21k_384": (SWIN_L, []),
    "ade20k-150_per_pixel_baseline_plus_R50": (RESNET, BASELINE_PLUS),
    "coco-panoptic_maskformer_panoptic_R50": (RESNET, PANOPTIC),
}


def _manifest_head_entries(path) -> List[Tuple[str, Tuple[int, ...], str]]:
    """(name under sem_seg_head., shape, dtype) in manifest order."""
    entries = []
    for line in path.read_text().splitlines():
        if line.startswith("sem_seg_head."):
            name, shape, dtype = line.split("\t")
            entries.append((name[len("sem_seg_head."):], tuple(ast.literal_eval(shape)), dtype))
    return entries


@pytest.mark.parametrize("manifest", sorted(MANIFESTS))
def test_head_state_dict_equals_official_manifest(reference_dir, manifest):
    input_shape, overrides = MANIFESTS[manifest]
    with torch.device("meta"):  # full-size heads, no memory or init cost
        head = build_sem_seg_head(_cfg(overrides), input_shape)
    ours = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in head.state_dict().items()]
    official = _manifest_head_entries(reference_dir / "manifests" / f"{manifest}.keys.txt")
    assert len(official) > 50
    # same names, shapes, dtypes, and order (optimizer states are stored in parameter order)
    assert ours == official


def test_every_manifest_is_covered(reference_dir):
    shipped = {p.name[: -len(".keys.txt")] for p in (reference_dir / "manifests").glob("*.keys.txt")}
    assert shipped == set(MANIFESTS)


def test_predictor_input_projection_follows_official_rule():
    """1x1 conv unless the input already has HIDDEN_DIM channels, or ENFORCE_INPUT_PROJ."""
    cfg = _cfg(["MODEL.MASK_FORMER.HIDDEN_DIM", 32, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64])
    assert isinstance(build_transformer_predictor(cfg, 32).input_proj, nn.Identity)
    assert build_transformer_predictor(cfg, 48).input_proj.weight.shape == (32, 48, 1, 1)
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = True
    assert build_transformer_predictor(cfg, 32).input_proj.weight.shape == (32, 32, 1, 1)


# ---------------------------------------------------------------- tiny heads: output shapes

B, H, W = 2, 64, 96
TINY_SHAPES = _shapes((8, 16, 24, 32))
TINY = [
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "MODEL.SEM_SEG_HEAD.MASK_DIM", 32,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 2,
    "MODEL.MASK_FORMER.HIDDEN_DIM", 32,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 4,
    "MODEL.MASK_FORMER.NHEADS", 4,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
    "MODEL.MASK_FORMER.DEC_LAYERS", 3,
    "MODEL.MASK_FORMER.DROPOUT", 0.0,
]


def _tiny_features(batch: int = B) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        f: torch.randn(batch, s.channels, H // s.stride, W // s.stride, generator=g)
        for f, s in TINY_SHAPES.items()
    }


def _tiny_head(overrides: Sequence = ()) -> nn.Module:
    return build_sem_seg_head(_cfg(TINY + list(overrides)), TINY_SHAPES).eval()


TINY_VARIANTS = {
    "base_res5": [],
    "encoder_res5": ["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "TransformerEncoderPixelDecoder"],
    "encoder_features": [
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "TransformerEncoderPixelDecoder",
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "transformer_encoder",
    ],
    "pre_norm_with_predictor_encoder": [
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "TransformerEncoderPixelDecoder",
        "MODEL.MASK_FORMER.PRE_NORM", True,
        "MODEL.MASK_FORMER.ENC_LAYERS", 1,
    ],
}


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_mask_former_head_output_shapes(variant):
    head = _tiny_head(TINY_VARIANTS[variant])
    with torch.no_grad():
        out = head(_tiny_features())
    assert out["pred_logits"].shape == (B, 4, 6)  # K + 1 = 6
    assert out["pred_masks"].shape == (B, 4, H // 4, W // 4)
    assert len(out["aux_outputs"]) == 3 - 1  # DEC_LAYERS - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (B, 4, 6)
        assert aux["pred_masks"].shape == (B, 4, H // 4, W // 4)
        assert not torch.allclose(aux["pred_masks"], out["pred_masks"])
    assert torch.isfinite(out["pred_masks"]).all()


def test_deep_supervision_adds_aux_outputs_without_changing_the_final_prediction():
    supervised = _tiny_head()
    plain = _tiny_head(["MODEL.MASK_FORMER.DEEP_SUPERVISION", False])
    plain.load_state_dict(supervised.state_dict())
    features = _tiny_features()
    with torch.no_grad():
        a, b = supervised(features), plain(features)
    assert "aux_outputs" not in b
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"])
    torch.testing.assert_close(a["pred_masks"], b["pred_masks"])


def test_transformer_encoder_pixel_decoder_returns_encoder_features():
    decoder = build_pixel_decoder(
        _cfg(TINY + ["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "TransformerEncoderPixelDecoder"]),
        TINY_SHAPES,
    ).eval()
    assert isinstance(decoder, TransformerEncoderPixelDecoder)
    assert len(decoder.transformer.encoder.layers) == 2  # SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS
    features = _tiny_features()
    with torch.no_grad():
        mask_features, encoded = decoder.forward_features(features)
        # the encoder output is what layer_4 (the top of the FPN) reads
        expected_top = decoder.layer_4(encoded)
        assert torch.allclose(decoder.forward_coarsest(features["res5"])[0], expected_top)
    assert mask_features.shape == (B, 32, H // 4, W // 4)
    assert encoded.shape == (B, 32, H // 32, W // 32)


def test_base_pixel_decoder_is_a_top_down_fpn():
    """With zeroed lateral convs, only the top level flows down (nearest-upsampled)."""
    decoder = BasePixelDecoder(
        {"res4": ShapeSpec(channels=3, stride=16), "res5": ShapeSpec(channels=3, stride=32)},
        conv_dim=2, mask_dim=2, norm="",
    )
    with torch.no_grad():
        for conv in (decoder.adapter_1, decoder.layer_1, decoder.layer_2, decoder.mask_features):
            conv.weight.zero_()
            conv.bias.zero_()
        decoder.layer_2.weight[:, :, 1, 1] = torch.eye(2, 3)  # identity on channels 0, 1
        decoder.layer_1.weight[:, :, 1, 1] = torch.eye(2)
        decoder.mask_features.weight[:, :, 1, 1] = torch.eye(2)
    res5 = torch.tensor([[[[1.0, -2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]])  # (1, 3, 1, 2)
    features = {"res4": torch.randn(1, 3, 2, 4), "res5": res5}
    mask_features, encoded = decoder.forward_features(features)
    assert encoded is None
    top = F.relu(res5[:, :2])  # layer_2 = conv + ReLU
    expected = F.interpolate(top, size=(2, 4), mode="nearest")  # layer_1 + mask_features: identity
    torch.testing.assert_close(mask_features, expected)


# ---------------------------------------------------------------- building blocks


def test_sine_position_encoding_matches_its_formula():
    pe = PositionEmbeddingSine(num_pos_feats=4, temperature=100, normalize=True)
    out = pe(torch.zeros(1, 7, 2, 3))
    assert out.shape == (1, 8, 2, 3)
    for c in range(8):
        axis, i = divmod(c, 4)  # channels 0-3: rows (y), 4-7: columns (x)
        for r in range(2):
            for q in range(3):
                pos = (r + 1) / (2 + 1e-6) if axis == 0 else (q + 1) / (3 + 1e-6)
                angle = pos * 2 * math.pi / 100 ** (2 * (i // 2) / 4)
                expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
                assert out[0, c, r, q].item() == pytest.approx(expected, abs=1e-5)


def test_sine_position_encoding_normalises_over_the_unpadded_extent():
    pe = PositionEmbeddingSine(num_pos_feats=8, normalize=True)
    padded = torch.zeros(1, 3, 5, dtype=torch.bool)
    padded[:, :, 3:] = True
    with_padding = pe(torch.zeros(1, 1, 3, 5), padded)
    torch.testing.assert_close(with_padding[..., :3], pe(torch.zeros(1, 1, 3, 3)))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_equals_torch_layer_without_position(pre_norm):
    ours = TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, normalize_before=pre_norm)
    ref = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, norm_first=pre_norm)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 2, 16)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_equals_torch_layer_without_position(pre_norm):
    ours = TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0, normalize_before=pre_norm)
    ref = nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0, norm_first=pre_norm)
    ref.load_state_dict(ours.state_dict())
    tgt, memory = torch.randn(3, 2, 16), torch.randn(6, 2, 16)
    torch.testing.assert_close(ours.eval()(tgt, memory), ref.eval()(tgt, memory), atol=1e-5, rtol=1e-5)


def test_position_encodings_enter_queries_and_keys_not_values():
    """A constant position added to everything changes nothing only if it also went into the
    values; here it must change the output, while pos=0 must not."""
    layer = TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0).eval()
    x = torch.randn(5, 1, 8)
    torch.testing.assert_close(layer(x, pos=torch.zeros_like(x)), layer(x))
    assert not torch.allclose(layer(x, pos=torch.randn_like(x)), layer(x))


def _tiny_transformer(num_decoder_layers: int, **kwargs) -> Transformer:
    return Transformer(d_model=16, nhead=2, num_encoder_layers=1, dim_feedforward=32, dropout=0.0,
                       num_decoder_layers=num_decoder_layers, **kwargs).eval()


def test_transformer_intermediate_outputs_equal_truncated_decoders():
    """Output i of the intermediate stack is what a decoder of i+1 layers returns (final norm
    included)."""
    full = _tiny_transformer(3, return_intermediate_dec=True)
    with torch.no_grad():  # a non-trivial final norm (at init it is nearly an identity here)
        full.decoder.norm.weight.uniform_(0.5, 2.0)
        full.decoder.norm.bias.uniform_(-1.0, 1.0)
    src, pos, queries = torch.randn(2, 16, 3, 4), torch.randn(2, 16, 3, 4), torch.randn(5, 16)
    hs, memory = full(src, None, queries, pos)
    assert hs.shape == (3, 2, 5, 16) and memory.shape == (2, 16, 3, 4)
    for n in (1, 2, 3):
        truncated = _tiny_transformer(n)
        truncated.load_state_dict(
            {k: v for k, v in full.state_dict().items() if k in truncated.state_dict()}
        )
        hs_n, memory_n = truncated(src, None, queries, pos)
        assert hs_n.shape == (1, 2, 5, 16)
        torch.testing.assert_close(hs_n[0], hs[n - 1])
        torch.testing.assert_close(memory_n, memory)


def test_mlp_applies_relu_between_layers_only():
    mlp = MLP(2, 3, 2, 3)
    assert [tuple(layer.weight.shape) for layer in mlp.layers] == [(3, 2), (3, 3), (2, 3)]
    with torch.no_grad():
        for layer in mlp.layers:
            layer.weight.copy_(torch.eye(*layer.weight.shape))
            layer.bias.zero_()
        mlp.layers[2].bias.fill_(-5.0)  # a negative output survives: no ReLU after the last layer
    torch.testing.assert_close(mlp(torch.tensor([[1.0, -1.0]])), torch.tensor([[-4.0, -5.0]]))


def test_predictor_without_mask_classification_predicts_masks_only():
    cfg = _cfg(TINY)
    predictor = build_transformer_predictor(cfg, 32, mask_classification=False).eval()
    assert not hasattr(predictor, "class_embed")
    out = predictor(torch.randn(1, 32, 2, 3), torch.randn(1, 32, 8, 12))
    assert set(out) == {"pred_masks", "aux_outputs"}
    assert out["pred_masks"].shape == (1, 4, 8, 12)
    assert all(set(a) == {"pred_masks"} for a in out["aux_outputs"])


def test_head_runs_under_cpu_autocast():
    head = _tiny_head()
    features = _tiny_features()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features)
    assert out["pred_masks"].shape == (B, 4, H // 4, W // 4)
    assert torch.isfinite(out["pred_masks"].float()).all()


# ---------------------------------------------------------------- registries and errors


@PIXEL_DECODER_REGISTRY.register()
class _TestOnesPixelDecoder(nn.Module):
    """A pixel decoder registered by another project: all-ones per-pixel embeddings."""

    @configurable
    def __init__(self, *, mask_dim: int):
        super().__init__()
        self.mask_dim = mask_dim

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {"mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM}

    def forward_features(self, features):
        res2 = features["res2"]
        return res2.new_ones(res2.shape[0], self.mask_dim, *res2.shape[-2:]), None


def test_custom_pixel_decoder_is_built_by_name_from_yaml():
    cfg = _cfg(TINY)
    cfg.merge_from_other_cfg(
        CfgNode.load_cfg("MODEL:\n  SEM_SEG_HEAD:\n    PIXEL_DECODER_NAME: _TestOnesPixelDecoder\n")
    )
    head = build_sem_seg_head(cfg, TINY_SHAPES).eval()
    assert isinstance(head, MaskFormerHead)
    assert isinstance(head.pixel_decoder, _TestOnesPixelDecoder)
    with torch.no_grad():
        masks = head(_tiny_features())["pred_masks"]
    # constant embeddings -> each query's mask is constant over the image
    assert masks.shape == (B, 4, H // 4, W // 4)
    torch.testing.assert_close(masks, masks[..., :1, :1].expand_as(masks))


def test_unknown_pixel_decoder_name_lists_the_registered_ones():
    cfg = _cfg(TINY + ["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "NoSuchDecoder"])
    with pytest.raises(KeyError, match="PIXEL_DECODER_NAME='NoSuchDecoder'") as err:
        build_sem_seg_head(cfg, TINY_SHAPES)
    assert "BasePixelDecoder" in str(err.value) and "TransformerEncoderPixelDecoder" in str(err.value)


def test_unknown_transformer_predictor_name_lists_the_registered_ones():
    cfg = _cfg(TINY + ["MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "NoSuchPredictor"])
    with pytest.raises(KeyError, match="NoSuchPredictor.*TransformerPredictor"):
        build_sem_seg_head(cfg, TINY_SHAPES)


def test_in_features_missing_from_backbone_is_named():
    cfg = _cfg(TINY + ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["p2", "res3"]])
    with pytest.raises(KeyError, match=r"\['p2'\]"):
        build_sem_seg_head(cfg, TINY_SHAPES)


def test_transformer_encoder_input_needs_the_encoder_pixel_decoder():
    head = _tiny_head(["MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "transformer_encoder"])
    with pytest.raises(ValueError, match="TransformerEncoderPixelDecoder"):
        head(_tiny_features())


def test_pixel_embedding_input_feeds_the_per_pixel_embeddings_to_the_predictor():
    """TRANSFORMER_IN_FEATURE "pixel_embedding" (Mask2Former's MaskFormerHead option): the queries
    attend to the stride-4 embeddings the masks are made of."""
    head = _tiny_head(["MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "pixel_embedding"])
    seen = {}
    head.predictor.register_forward_pre_hook(lambda m, args: seen.update(x=args[0], emb=args[1]))
    with torch.no_grad():
        out = head(_tiny_features())
    assert seen["x"] is seen["emb"]
    assert seen["x"].shape == (B, 32, H // 4, W // 4)  # MASK_DIM channels at stride 4
    assert out["pred_logits"].shape == (B, 4, 6)
    assert out["pred_masks"].shape == (B, 4, H // 4, W // 4)


def test_pre_v2_official_checkpoint_keys_load_into_pixel_decoder():
    """Official checkpoints from before the pixel decoder was a submodule keep its parameters
    directly under the head; they load unchanged (current keys load too)."""
    source, target = _tiny_head(), _tiny_head()
    legacy = {k.replace("pixel_decoder.", "", 1): v for k, v in source.state_dict().items()}
    assert "adapter_1.weight" in legacy
    target.load_state_dict(legacy, strict=True)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    target.load_state_dict(source.state_dict(), strict=True)


# ---------------------------------------------------------------- per-pixel baselines


def test_per_pixel_baseline_outputs_and_ignores_unlabeled_pixels():
    head = _tiny_head(["MODEL.SEM_SEG_HEAD.NAME", "PerPixelBaselineHead",
                       "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", 2.0])
    assert isinstance(head, PerPixelBaselineHead)
    assert head.predictor.weight.shape == (5, 32, 1, 1)
    features = _tiny_features()
    with torch.no_grad():
        logits, extra = head(features)
    assert logits.shape == (B, 5, H, W) and extra == {}

    targets = torch.full((B, H, W), 255, dtype=torch.long)
    targets[0, 10, 20] = 3
    targets[1, 40, 7] = 1
    head.train()
    none, losses = head(features, targets)
    assert none is None and set(losses) == {"loss_sem_seg"}
    labeled = torch.stack([logits[0, :, 10, 20], logits[1, :, 40, 7]])
    expected = 2.0 * F.cross_entropy(labeled, torch.tensor([3, 1]))
    torch.testing.assert_close(losses["loss_sem_seg"], expected)


def test_per_pixel_baseline_plus_uses_one_query_per_class_with_deep_supervision():
    overrides = ["MODEL.SEM_SEG_HEAD.NAME", "PerPixelBaselinePlusHead",
                 "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 5]
    head = _tiny_head(overrides)
    assert isinstance(head, PerPixelBaselinePlusHead)
    assert not hasattr(head.predictor, "class_embed")
    features = _tiny_features()
    with torch.no_grad():
        logits, _ = head(features)
        masks = head.predictor(features["res5"], head.pixel_decoder.forward_features(features)[0])
    assert logits.shape == (B, 5, H, W)
    torch.testing.assert_close(
        logits, F.interpolate(masks["pred_masks"], scale_factor=4, mode="bilinear", align_corners=False)
    )
    head.train()
    _, losses = head(features, torch.randint(0, 5, (B, H, W)))
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_0", "loss_sem_seg_1"}  # DEC_LAYERS 3
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_per_pixel_baseline_plus_needs_one_query_per_class():
    with pytest.raises(ValueError, match="NUM_OBJECT_QUERIES"):
        _tiny_head(["MODEL.SEM_SEG_HEAD.NAME", "PerPixelBaselinePlusHead"])  # 4 queries, 5 classes


@pytest.mark.parametrize("head_name", ["PerPixelBaselineHead", "PerPixelBaselinePlusHead"])
def test_per_pixel_baselines_work_in_detectron2_semantic_segmentor(head_name):
    cfg = _cfg(TINY + [
        "MODEL.META_ARCHITECTURE", "SemanticSegmentor",
        "MODEL.SEM_SEG_HEAD.NAME", head_name,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 5,
        "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.OUT_FEATURES", list(FEATURES),
        "MODEL.DEVICE", "cpu",
    ])
    model = build_model(cfg)
    image = torch.randint(0, 256, (3, H, W)).float()
    model.train()
    losses = model([{"image": image, "sem_seg": torch.randint(0, 5, (H, W))}])
    assert "loss_sem_seg" in losses and torch.isfinite(losses["loss_sem_seg"])
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": image, "height": 32, "width": 48}])
    assert result["sem_seg"].shape == (5, 32, 48)
