"""The faster inference paths compute what the straightforward ones do."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess

from maskformer_d2.postprocessing import (
    ImagePrediction,
    InferenceOptions,
    instance_output,
    panoptic_output,
    semantic_inference,
    semantic_output,
    upsampled_semantic_inference,
)

from _tiny_maskformer import tiny_cfg


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
        t.mask_pred  # every query's full-size masks exist already
        seg_a, info_a = panoptic_output(a, options)
        seg_t, info_t = panoptic_output(t, options)
        assert torch.equal(seg_a, seg_t) and info_a == info_t and info_a
        inst_a, inst_t = instance_output(a, options), instance_output(t, options)
        assert torch.equal(inst_a.pred_masks, inst_t.pred_masks)
        assert torch.equal(inst_a.scores, inst_t.scores)
        torch.testing.assert_close(semantic_output(a, options), semantic_output(t, options),
                                   rtol=0, atol=1e-6)


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
