"""The faster inference paths compute what the straightforward ones do."""

import pytest
import torch
import torch.nn.functional as F
from _tiny_maskformer import tiny_cfg
from detectron2.layers import Conv2d
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess

from maskformer_d2.inference.postprocessing import (
    ImagePrediction,
    InferenceOptions,
    instance_output,
    panoptic_output,
    semantic_inference,
    semantic_output,
    upsampled_semantic_inference,
)
from maskformer_d2.inference.separable_resize import linear_resize_matrix, resize_rows, resize_width
from maskformer_d2.modeling.mask_logits import DeferredProjection, is_linear_conv, mask_logits


def _upsample(x, size):
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("low, size", [
    ((24, 40), (96, 160)),   # stride 4: computed in bands
    ((24, 40), (48, 80)),    # stride 2: in bands
    ((24, 40), (72, 120)),   # stride 3: whole image at once
    ((24, 40), (100, 170)),  # not a multiple
])
def test_banded_semantic_inference_equals_the_whole_image_one(low, size):
    g = torch.Generator().manual_seed(0)
    mask_cls = torch.randn(7, 5, generator=g)
    masks = torch.randn(7, *low, generator=g) * 4
    expected = semantic_inference(mask_cls, _upsample(masks, size))
    got = upsampled_semantic_inference(mask_cls, masks, size, rows_per_chunk=5)
    assert got.shape == (4, *size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _prediction(image_size=(90, 150), out=(90, 150), seed=0):
    g = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(9, 5, generator=g) * 3
    low = torch.randn(9, 24, 40, generator=g) * 4
    return ImagePrediction(mask_cls, low, (96, 160), image_size, *out)


@pytest.mark.parametrize("image_size, out", [((90, 150), (90, 150)), ((90, 150), (45, 200))])
def test_masks_of_a_few_queries_equal_rows_of_all_masks(image_size, out):
    p = _prediction(image_size, out)
    full = sem_seg_postprocess(_upsample(p.low_res_mask_pred, (96, 160)), image_size, *out)
    assert torch.equal(p.mask_pred, full)  # the identity resize is skipped, exactly
    queries = torch.tensor([4, 1, 4, 8])
    assert torch.equal(_prediction(image_size, out).masks_of(queries), full[queries])
    keep = torch.zeros(9, dtype=torch.bool)
    keep[[0, 5]] = True
    assert torch.equal(_prediction(image_size, out).lazy_mask_pred[keep], full[keep])
    assert _prediction(image_size, out).lazy_mask_pred.shape == full.shape
    none = torch.zeros(9, dtype=torch.bool)  # no query kept (e.g. panoptic thresholds)
    assert _prediction(image_size, out).lazy_mask_pred[none].shape == (0, *out)


def test_task_outputs_do_not_depend_on_which_masks_were_computed_first():
    options = InferenceOptions(thing_ids=frozenset({0, 1}), object_mask_threshold=0.0,
                               overlap_threshold=0.2, detections_per_image=10)
    alone = [_prediction(seed=s) for s in range(3)]
    together = [_prediction(seed=s) for s in range(3)]
    for a, t in zip(alone, together):
        _ = t.mask_pred  # every query's full-size masks exist already
        seg_a, info_a = panoptic_output(a, options)
        seg_t, info_t = panoptic_output(t, options)
        assert torch.equal(seg_a, seg_t) and info_a == info_t and info_a
        inst_a, inst_t = instance_output(a, options), instance_output(t, options)
        assert torch.equal(inst_a.pred_masks, inst_t.pred_masks)
        assert torch.equal(inst_a.scores, inst_t.scores)
        torch.testing.assert_close(semantic_output(a, options), semantic_output(t, options),
                                   rtol=0, atol=1e-6)


def test_cpu_layout_is_channels_last_in_eval_and_contiguous_in_training():
    """On the CPU inference runs in NHWC and training in NCHW (its convolution backward is the
    faster one); switching keeps the parameter objects an optimiser holds, and their values."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    convs = [p for p in model.parameters() if p.dim() == 4]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.training and all(p.is_contiguous() for p in convs)
    model.eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert [p for p in model.parameters() if p.dim() == 4] == convs
    images = model.preprocess_image([{"image": torch.rand(3, 64, 96) * 255}])
    assert images.tensor.is_contiguous(memory_format=torch.channels_last)
    model.train()
    assert all(p.is_contiguous() for p in convs)
    assert model.preprocess_image([{"image": torch.rand(3, 64, 96) * 255}]).tensor.is_contiguous()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_maskformer_inference_skips_the_earlier_layers_predictions():
    """The meta-architecture reads the final prediction only; the head returns the official
    eval-mode outputs (every layer's) when asked, with the same final prediction."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(overrides=["MODEL.MASK_FORMER.DEC_LAYERS", 3])).eval()
    predictor = model.sem_seg_head.predictor
    assert predictor.aux_outputs_in_eval is False
    images = model.preprocess_image([{"image": torch.rand(3, 64, 96) * 255}])
    assert images.tensor.is_contiguous(memory_format=torch.channels_last)  # CPU: NHWC
    with torch.no_grad():
        features = model.backbone(images.tensor)
        final_only = model.sem_seg_head(features)
        predictor.aux_outputs_in_eval = True
        every_layer = model.sem_seg_head(features)
    assert "aux_outputs" not in final_only and len(every_layer["aux_outputs"]) == 2
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(final_only[key], every_layer[key], rtol=0, atol=1e-6)


def _deferred(in_channels=16, mask_dim=32, seed=0):
    torch.manual_seed(seed)
    conv = Conv2d(in_channels, mask_dim, kernel_size=3, padding=1)
    features = torch.randn(2, in_channels, 12, 20).to(memory_format=torch.channels_last)
    return DeferredProjection(features, conv)


def test_composed_mask_conv_equals_the_conv_then_the_product():
    deferred = _deferred()
    embed = torch.randn(1, 2, 5, 32)  # (L, B, Q, mask_dim): 5 masks < 32 channels
    assert deferred.cheaper_composed(5) and not deferred.cheaper_composed(6 * 100)
    with torch.no_grad():
        expected = torch.einsum("lbqc,bchw->lbqhw", embed, deferred.conv(deferred.features))
        got = mask_logits(embed, deferred)
    assert got.shape == (1, 2, 5, 12, 20) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, expected)  # really computed another way (summation order)
    many = torch.randn(6, 2, 100, 32)  # 600 masks > 32 channels: the embeddings are computed
    with torch.no_grad():
        assert torch.equal(mask_logits(many, deferred), torch.einsum(
            "lbqc,bchw->lbqhw", many, deferred.conv(deferred.features)))


def test_an_exported_graph_keeps_the_two_steps():
    deferred = _deferred()
    embed = torch.randn(1, 2, 5, 32)
    class Masks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = deferred.conv

        def forward(self, e, f):
            return mask_logits(e, DeferredProjection(f, self.conv))

    with torch.no_grad():
        traced = torch.jit.trace(Masks(), (embed, deferred.features), check_trace=False)
    ops = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::einsum" in ops and "aten::_convolution" in ops
    with torch.no_grad():
        torch.testing.assert_close(traced(embed, deferred.features), mask_logits(embed, deferred),
                                   rtol=1e-5, atol=1e-5)


def test_only_a_plain_same_size_conv_is_composed():
    assert is_linear_conv(Conv2d(8, 8, kernel_size=3, padding=1))
    assert is_linear_conv(Conv2d(8, 8, kernel_size=1))
    assert not is_linear_conv(Conv2d(8, 8, kernel_size=3, padding=1, norm=torch.nn.GroupNorm(2, 8)))
    assert not is_linear_conv(Conv2d(8, 8, kernel_size=3, padding=1, activation=F.relu))
    assert not is_linear_conv(Conv2d(8, 8, kernel_size=3, padding=1, stride=2))
    assert not is_linear_conv(Conv2d(8, 8, kernel_size=3))  # output smaller than the input


def test_the_predictor_gets_the_deferred_conv_in_eval_only():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    predictor = model.sem_seg_head.predictor
    seen = []
    predictor.register_forward_pre_hook(lambda module, args: seen.append(type(args[1])))
    features = model.backbone(torch.randn(1, 3, 64, 96))
    model.sem_seg_head(features)
    with torch.no_grad():
        model.eval()
        out = model.sem_seg_head(features)
        predictor.accepts_deferred_mask_features = False  # the two-step path, for comparison
        two_steps = model.sem_seg_head(features)
    assert seen == [torch.Tensor, DeferredProjection, torch.Tensor]
    torch.testing.assert_close(out["pred_masks"], two_steps["pred_masks"], rtol=1e-5, atol=1e-5)




@pytest.mark.parametrize("size", [(96, 160), (100, 170), (13, 17), (24, 40)])
def test_separable_resize_equals_interpolate(size):
    g = torch.Generator().manual_seed(1)
    masks = torch.randn(6, 24, 40, generator=g) * 4
    along_width = resize_width(masks, size[1])
    height_matrix = linear_resize_matrix(24, size[0], masks)
    bands = [resize_rows(along_width, height_matrix, top, min(top + 7, size[0]))
             for top in range(0, size[0], 7)]
    torch.testing.assert_close(torch.cat(bands, dim=1), _upsample(masks, size), rtol=0, atol=5e-6)
    assert (height_matrix != 0).sum(1).le(2).all()  # two taps per output row


def test_a_pixel_decoder_subclass_with_its_own_forward_features_gets_no_deferred_flag():
    from maskformer_d2.modeling.pixel_decoder.maskformer_pixel_decoder import BasePixelDecoder

    class OwnDecoder(BasePixelDecoder):  # written against the two-argument contract
        def forward_features(self, features):
            return super().forward_features(features)

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    decoder = model.sem_seg_head.pixel_decoder
    shapes = model.backbone.output_shape()
    own = OwnDecoder({name: shapes[name] for name in decoder.in_features},
                     conv_dim=64, mask_dim=64, norm="GN")
    own.load_state_dict(decoder.state_dict())
    assert decoder.supports_deferred_mask_features and not own.supports_deferred_mask_features
    features = model.backbone(torch.randn(1, 3, 64, 96))
    with torch.no_grad():
        expected = model.sem_seg_head(features)["pred_masks"]
        model.sem_seg_head.pixel_decoder = own.eval()
        got = model.sem_seg_head(features)["pred_masks"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
