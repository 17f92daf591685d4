"""Mask2Former's parts on hand-made inputs (parity with the official model on whole models is in
test_official_parity.py, the official key manifests in test_configs.py):

* multi-scale deformable attention equals a brute-force bilinear read of every sampling point;
* the masked-attention decoder's masks: a query never sees positions its previous mask hides,
  a query whose mask hides everything sees everything, eval without auxiliary outputs gives the
  same final prediction;
* Mask2Former's panoptic segment rule and the recipe chosen by the decoder's name;
* the shapes recipe trains through train_net.py and its loss goes down.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

import maskformer_d2  # noqa: F401  (registers the models)
from maskformer_d2.config import load_config
from maskformer_d2.inference.postprocessing import panoptic_inference
from maskformer_d2.modeling.pixel_decoder import deformable_attention
from maskformer_d2.modeling.pixel_decoder import mask2former_pixel_decoder as m2f_pixel_decoder
from maskformer_d2.modeling.pixel_decoder.deformable_attention import (
    MSDeformAttn,
    _sampled_attention,
    multi_scale_deformable_attention,
)
from maskformer_d2.modeling.pixel_decoder.mask2former_pixel_decoder import (
    MSDeformAttnPixelDecoder,
    MSDeformAttnTransformerEncoderOnly,
)
from maskformer_d2.modeling.recipe import num_train_points, recipe_of
from maskformer_d2.modeling.transformer_decoder import TRANSFORMER_PREDICTOR_REGISTRY

REPO = Path(__file__).resolve().parents[1]
M2F_SHAPES = REPO / "configs" / "shapes" / "mask2former_R18_shapes.yaml"
MF_SHAPES = REPO / "configs" / "shapes" / "maskformer_R18_shapes.yaml"


# ----------------------------------------------------------------------------- deformable attention
def _bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """(D, h, w) at normalised (x, y) in [0, 1] (pixel centres at (i + 0.5) / w), zeros outside."""
    d, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(d, dtype=torch.float64)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            if 0 <= xi < w and 0 <= yi < h:
                out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * image[:, yi, xi].double()
    return out


@pytest.mark.parametrize("autograd", [False, True])
def test_deformable_attention_equals_brute_force_bilinear_reads(autograd):
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    batch, heads, dim, queries, points = 2, 2, 3, 5, 3
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim)
    # some locations outside [0, 1]: they read zeros there
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.4 - 0.2
    weights = torch.softmax(torch.randn(batch, queries, heads, len(shapes) * points), -1)
    weights = weights.view(batch, queries, heads, len(shapes), points)

    with torch.set_grad_enabled(autograd):
        got = multi_scale_deformable_attention(value.requires_grad_(autograd), shapes, locations,
                                               weights).detach()

    expected = torch.zeros(batch, queries, heads * dim, dtype=torch.float64)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                acc = torch.zeros(dim, dtype=torch.float64)
                for level, (h, w) in enumerate(shapes):
                    image = value.detach()[b, starts[level]: starts[level] + h * w, m].t().reshape(dim, h, w)
                    for p in range(points):
                        x, y = locations[b, q, m, level, p].tolist()
                        acc += weights[b, q, m, level, p].double() * _bilinear(image, x, y)
                expected[b, q, m * dim: (m + 1) * dim] = acc
    assert got.shape == (batch, queries, heads * dim)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


@pytest.fixture
def recompute_always(monkeypatch):
    """Training's recomputing deformable attention at any size (by default only from
    ``_RECOMPUTE_FROM`` sampled values on; these tests use small ones)."""
    monkeypatch.setattr(deformable_attention, "_RECOMPUTE_FROM", 0)


def test_deformable_attention_recomputes_from_its_size_threshold(monkeypatch):
    shapes = [(4, 4), (2, 2)]
    inputs = (torch.randn(1, 20, 2, 4, requires_grad=True), torch.rand(1, 3, 2, 2, 2, 2),
              torch.full((1, 3, 2, 2, 2), 0.25))
    sampled = 1 * 2 * 4 * 3 * 2 * 2  # B * M * D * Lq * L * P
    small = multi_scale_deformable_attention(inputs[0], shapes, *inputs[1:])
    assert sampled < deformable_attention._RECOMPUTE_FROM
    assert "Recomputed" not in type(small.grad_fn).__name__
    monkeypatch.setattr(deformable_attention, "_RECOMPUTE_FROM", sampled + 1)  # one short of it
    below = multi_scale_deformable_attention(inputs[0], shapes, *inputs[1:])
    monkeypatch.setattr(deformable_attention, "_RECOMPUTE_FROM", sampled)  # at the threshold
    large = multi_scale_deformable_attention(inputs[0], shapes, *inputs[1:])
    assert "Recomputed" not in type(below.grad_fn).__name__
    assert "Recomputed" in type(large.grad_fn).__name__
    torch.testing.assert_close(large, small, rtol=0, atol=1e-6)


def test_deformable_attention_gradients_equal_finite_differences(recompute_always):
    torch.manual_seed(2)
    shapes = [(4, 5), (2, 3)]
    value = torch.randn(1, 26, 2, 3, dtype=torch.float64, requires_grad=True)
    # away from pixel-centre lines, where bilinear sampling has kinks
    locations = (torch.rand(1, 4, 2, 2, 2, 2, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    weights = torch.rand(1, 4, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention(v, shapes, loc, w),
        (value, locations, weights), eps=1e-7, atol=1e-5)


def test_deformable_attention_is_the_same_with_and_without_autograd(recompute_always):
    torch.manual_seed(3)
    shapes = [(6, 7), (3, 4), (2, 2)]
    value = torch.randn(2, 58, 4, 8)
    locations = torch.rand(2, 9, 4, 3, 4, 2) * 1.3 - 0.15
    weights = torch.softmax(torch.randn(2, 9, 4, 12), -1).view(2, 9, 4, 3, 4)
    with torch.no_grad():
        gathered = multi_scale_deformable_attention(value, shapes, locations, weights)
    trained = multi_scale_deformable_attention(value.requires_grad_(), shapes, locations, weights)
    sampled = _sampled_attention(value, shapes, locations, weights)  # what an export traces
    assert trained.requires_grad and not gathered.requires_grad
    torch.testing.assert_close(trained.detach(), gathered, rtol=0, atol=0)
    torch.testing.assert_close(sampled.detach(), gathered, rtol=0, atol=1e-5)


def test_deformable_attention_backward_equals_grid_sample_autograd(recompute_always):
    """The recomputing backward gives the gradients autograd takes through ``grid_sample``."""
    torch.manual_seed(4)
    shapes = [(8, 6), (4, 3), (2, 2)]
    inputs = (torch.randn(2, 64, 4, 8), torch.rand(2, 11, 4, 3, 4, 2) * 1.3 - 0.15,
              torch.softmax(torch.randn(2, 11, 4, 12), -1).view(2, 11, 4, 3, 4))
    grad_out = torch.randn(2, 11, 32)
    grads = []
    for fn in (multi_scale_deformable_attention, _sampled_attention):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(leaves[0], shapes, leaves[1], leaves[2])
        assert ("Recomputed" in type(out.grad_fn).__name__) == (fn is multi_scale_deformable_attention)
        grads.append(torch.autograd.grad(out, leaves, grad_out))
    for got, expected in zip(*grads):
        assert got.shape == expected.shape and expected.abs().max() > 0.1
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _encoder_step(recompute: bool, seed: int = 5):
    """Output, parameter and input gradients and saved-activation bytes of one training forward
    and backward of a small deformable encoder (3 levels, 2 layers)."""
    torch.manual_seed(seed)
    encoder = MSDeformAttnTransformerEncoderOnly(d_model=32, nhead=4, num_encoder_layers=2,
                                                 dim_feedforward=64, dropout=0.0,
                                                 num_feature_levels=3, recompute_in_backward=recompute)
    with torch.no_grad():  # off the initial zeros, so that positions move the sampling points
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    srcs = [torch.randn(2, 32, s, s, requires_grad=True) for s in (8, 4, 2)]
    pos = [torch.randn(2, 32, s, s) for s in (8, 4, 2)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = encoder.train()(srcs, pos)
    loss = sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i))).sum()
               for i, o in enumerate(out))
    loss.backward()
    grads = [p.grad.clone() for p in encoder.parameters()] + [s.grad.clone() for s in srcs]
    return out, grads, sum(saved)


def test_encoder_recomputed_in_backward_gives_the_same_values_and_gradients(monkeypatch):
    monkeypatch.setattr(m2f_pixel_decoder, "_RECOMPUTE_FROM", 0)
    kept_out, kept_grads, kept_saved = _encoder_step(recompute=False)
    out, grads, saved = _encoder_step(recompute=True)
    assert saved < kept_saved / 3  # only each layer's inputs are kept
    for got, expected in zip(out, kept_out):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert len(grads) == len(kept_grads)
    for got, expected in zip(grads, kept_grads):
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_encoder_recomputes_only_from_its_size_threshold(monkeypatch):
    tokens = 2 * (64 + 16 + 4) * 32  # B * S * C of _encoder_step
    assert tokens < m2f_pixel_decoder._RECOMPUTE_FROM
    _, _, default = _encoder_step(recompute=True)
    monkeypatch.setattr(m2f_pixel_decoder, "_RECOMPUTE_FROM", tokens + 1)
    _, _, below = _encoder_step(recompute=True)
    monkeypatch.setattr(m2f_pixel_decoder, "_RECOMPUTE_FROM", tokens)
    _, _, at = _encoder_step(recompute=True)
    _, _, kept = _encoder_step(recompute=False)
    assert default == below == kept and at < kept / 3


def test_recompute_encoder_config_key_reaches_the_encoder():
    cfg = load_config(str(REPO / "configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml"))
    assert cfg.MODEL.SEM_SEG_HEAD.RECOMPUTE_ENCODER is True
    cfg.defrost()
    for value in (True, False):
        cfg.MODEL.SEM_SEG_HEAD.RECOMPUTE_ENCODER = value
        args = MSDeformAttnPixelDecoder.from_config(cfg, {f"res{i}": ShapeSpec(channels=8 * i, stride=2 ** i)
                                                         for i in range(2, 6)})
        decoder = MSDeformAttnPixelDecoder(**args)
        assert decoder.transformer.encoder.recompute_in_backward is value


def test_deformable_attention_starts_on_rings_with_uniform_weights():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points right, head 1 down, head 2 left, head 3 up; point p at distance p + 1
    torch.testing.assert_close(offsets[0, 1, 2], torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(offsets[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(offsets[2, 0, 1], torch.tensor([-2.0, 0.0]), atol=1e-6, rtol=0)
    assert attn.attention_weights.weight.abs().sum() == 0 == attn.attention_weights.bias.abs().sum()


# ----------------------------------------------------------------------------- masked attention
def _tiny_m2f(extra=()):
    cfg = load_config(str(M2F_SHAPES), ["MODEL.MASK_FORMER.HIDDEN_DIM", "32",
                                        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
                                        "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
                                        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
                                        "MODEL.DEVICE", "cpu", *extra])
    torch.manual_seed(0)
    return build_model(cfg)


def test_queries_do_not_see_positions_their_mask_hides():
    decoder = _tiny_m2f().sem_seg_head.predictor.eval()
    torch.manual_seed(1)
    mask_features = torch.randn(1, 32, 16, 16)
    prediction, attn_mask = decoder.predict(decoder.query_feat.weight[:, None], mask_features, (4, 4))
    masks = prediction["pred_masks"]
    assert attn_mask.shape == (decoder.num_heads, decoder.num_queries, 16)
    resized = torch.nn.functional.interpolate(masks, size=(4, 4), mode="bilinear", align_corners=False)
    hidden = (resized.sigmoid() < 0.5).flatten(2)[0]
    fully_hidden = hidden.all(-1)
    assert torch.equal(attn_mask[0][~fully_hidden], hidden[~fully_hidden])
    assert not attn_mask[0][fully_hidden].any()  # a query that would see nothing sees everything

    # changing the memory where query 0 may not look leaves query 0's output unchanged
    layer = decoder.transformer_cross_attention_layers[0]
    q = decoder.query_feat.weight[:, None]
    memory = torch.randn(16, 1, 32)
    mask = torch.zeros(decoder.num_heads, decoder.num_queries, 16, dtype=torch.bool)
    mask[:, 0, 5:] = True
    changed = memory.clone()
    changed[5:] += 10 * torch.randn(11, 1, 32)
    out, out_changed = layer(q, memory, mask), layer(q, changed, mask)
    torch.testing.assert_close(out[0], out_changed[0])
    assert not torch.allclose(out[1], out_changed[1])


def test_eval_without_auxiliary_outputs_gives_the_same_final_prediction():
    model = _tiny_m2f().eval()
    images = torch.randn(1, 3, 64, 96)
    predictor = model.sem_seg_head.predictor
    with torch.no_grad():
        assert predictor.aux_outputs_in_eval is False  # MaskFormer turned it off for inference
        fast = model.network(images)
        predictor.aux_outputs_in_eval = True
        full = model.network(images)
    assert "aux_outputs" not in fast and len(full["aux_outputs"]) == 6
    assert torch.equal(fast["pred_logits"], full["pred_logits"])
    assert torch.equal(fast["pred_masks"], full["pred_masks"])
    assert fast["pred_masks"].shape == (1, 20, 16, 24)


# ----------------------------------------------------------------------------- recipe and rules
def test_recipe_follows_the_transformer_decoder():
    m2f, mf = load_config(str(M2F_SHAPES)), load_config(str(MF_SHAPES))
    assert recipe_of(m2f).name == "mask2former" and recipe_of(mf).name == "maskformer"
    assert num_train_points(m2f) == 2048  # set in the file
    assert num_train_points(mf) == 0  # -1 = the family default: dense for MaskFormer
    m2f.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = -1
    assert num_train_points(m2f) == 112 * 112
    model = build_model(load_config(str(M2F_SHAPES), ["MODEL.DEVICE", "cpu"]))
    assert model.criterion.mask_loss == "bce" and model.criterion.matcher.mask_cost == "bce"
    assert model.criterion.weight_dict["loss_ce"] == 2.0 and model.criterion.matcher.cost_class == 2.0
    assert model.inference_options.panoptic_segment_within_own_mask
    assert model.inference_options.sem_seg_postprocess_before_inference  # panoptic is on

    @TRANSFORMER_PREDICTOR_REGISTRY.register()
    class _UserDecoderWithoutRecipe(torch.nn.Module):
        pass

    try:
        mf.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "_UserDecoderWithoutRecipe"
        assert recipe_of(mf).name == "maskformer"
    finally:
        TRANSFORMER_PREDICTOR_REGISTRY._obj_map.pop("_UserDecoderWithoutRecipe")


def test_mask2former_panoptic_segment_is_won_pixels_within_its_own_mask():
    # query 0 (thing, class 0) wins every pixel of row 0, but its own mask is >= 0.5 only on the
    # first two; query 1 (stuff, class 1) covers row 1
    big, small = 4.0, -4.0
    mask_pred = torch.tensor([[[big, big, -0.1, -0.1], [small] * 4],
                              [[-3.0] * 4, [big] * 4]])
    mask_cls = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    maskformer, _ = panoptic_inference(mask_cls, mask_pred, 2, {0}, 0.0, 0.0)
    mask2former, info = panoptic_inference(mask_cls, mask_pred, 2, {0}, 0.0, 0.0, within_own_mask=True)
    assert maskformer.tolist() == [[1, 1, 1, 1], [2, 2, 2, 2]]
    assert mask2former.tolist() == [[1, 1, 0, 0], [2, 2, 2, 2]]
    assert [s["category_id"] for s in info] == [0, 1]


# ----------------------------------------------------------------------------- train_net
@pytest.mark.slow
def test_train_net_trains_the_mask2former_shapes_recipe(tmp_path):
    """train_net.py with the Mask2Former shapes recipe: the loss goes down and the three
    evaluators run on the model it writes."""
    out = tmp_path / "out"
    env = dict(os.environ, MASKFORMER_D2_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(M2F_SHAPES),
           "DATASETS.SHAPES.NUM_TRAIN", "48", "DATASETS.SHAPES.NUM_VAL", "6",
           "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "40", "SOLVER.BASE_LR", "0.001",
           "SOLVER.CHECKPOINT_PERIOD", "40", "MODEL.MASK_FORMER.HIDDEN_DIM", "64",
           "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128", "OUTPUT_DIR", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "metrics.json") as f:
        losses = [json.loads(line)["total_loss"] for line in f if '"total_loss"' in line]
    assert len(losses) >= 2 and losses[-1] < 0.8 * losses[0], losses
    assert (out / "model_final.pth").exists()
    for task in ("sem_seg", "segm", "panoptic_seg"):  # detectron2's evaluators report each
        assert f"copypaste: Task: {task}\n" in proc.stderr + proc.stdout, task


@pytest.mark.slow
def test_demo_runs_an_official_mask2former_config_unchanged(tmp_path):
    """demo/demo.py with the official COCO panoptic R50 Mask2Former config as shipped (random
    weights of the full model): all three outputs drawn side by side."""
    import cv2

    config = REPO / "configs" / "coco" / "panoptic-segmentation" / "maskformer2_R50_bs16_50ep.yaml"
    torch.manual_seed(0)
    model = build_model(load_config(str(config), ["MODEL.DEVICE", "cpu"]))
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    picture = torch.Generator().manual_seed(0)
    image = (torch.rand(96, 128, 3, generator=picture) * 255).to(torch.uint8).numpy()
    cv2.imwrite(str(tmp_path / "picture.png"), image)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    cmd = [sys.executable, str(REPO / "demo" / "demo.py"), "--config-file", str(config),
           "--input", str(tmp_path / "picture.png"), "--output", str(tmp_path / "out.png"),
           "--task", "all", "--opts", "MODEL.WEIGHTS", str(tmp_path / "model.pth"),
           "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    drawn = cv2.imread(str(tmp_path / "out.png"))
    assert drawn.shape[1] == 3 * 128 and drawn.shape[0] > 96  # semantic | instance | panoptic
    assert "panoptic segment" in proc.stderr


def test_checkpoints_with_the_pre_rename_query_name_load(tmp_path):
    """Early official Mask2Former checkpoints call the query features ``static_query``; they load
    through the checkpointer into ``query_feat``."""
    import pickle

    from maskformer_d2.checkpoint import MaskFormerCheckpointer

    source = _tiny_m2f()
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    state["sem_seg_head.predictor.static_query.weight"] = state.pop(
        "sem_seg_head.predictor.query_feat.weight")
    with open(tmp_path / "old.pkl", "wb") as f:
        pickle.dump({"model": state, "__author__": "official"}, f)
    target = _tiny_m2f()
    with torch.no_grad():
        target.sem_seg_head.predictor.query_feat.weight.zero_()
    MaskFormerCheckpointer(target).load(str(tmp_path / "old.pkl"))
    assert torch.equal(target.sem_seg_head.predictor.query_feat.weight,
                       source.sem_seg_head.predictor.query_feat.weight)
