"""Fast evaluation: our evaluators give detectron2's numbers; batched inference gives the
batch-of-one outputs; bf16 inference is opt-in and says when the machine cannot do it.

The fast evaluators against the stock ones on the shapes val split, with a trained model's
outputs, are in tests/test_train_e2e.py (test_quickstart_recipe_learns_all_three_tasks).
"""
import json
import logging

import numpy as np
import pytest
import torch
from _tiny_maskformer import REPO, tiny_cfg
from detectron2.modeling import build_model
from panopticapi.evaluation import pq_compute_single_core
from panopticapi.utils import id2rgb
from PIL import Image
from pycocotools import mask as coco_mask

from maskformer_d2.evaluation.histograms import pair_counts, value_counts
from maskformer_d2.evaluation.instance import compact_results, encode_masks, expand_results, results_json
from maskformer_d2.evaluation.panoptic import PQStats, _pixel_index, accumulate_image, read_panoptic_png
from maskformer_d2.evaluation.synthetic import (
    SyntheticSpec,
    metric_differences,
    register_synthetic_set,
    run_evaluators,
    synthetic_outputs,
)
from maskformer_d2.inference import precision as precision_module
from maskformer_d2.inference.postprocessing import argmax_over_first_dim, mask_boxes
from maskformer_d2.inference.tasks import set_enabled_tasks


# ------------------------------------------------------------------------------- evaluators
@pytest.mark.slow
def test_fast_evaluators_equal_the_stock_ones_on_a_coco_sized_synthetic_set(tmp_path):
    """2000 images of 20 thing segments (plus stuff, crowd and unlabelled pixels) at a small
    resolution, so that the stock evaluators take a minute, not ten."""
    from detectron2.data import MetadataCatalog

    from maskformer_d2.evaluation import evaluators_of
    spec = SyntheticSpec(num_images=2000, height=48, width=64, segments=20, detections=20)
    name = register_synthetic_set(spec, str(tmp_path / "set"))
    meta = MetadataCatalog.get(name)
    evaluators = {(task, impl): evaluators_of(task, name, meta, str(tmp_path / impl), impl)[0]
                  for task in ("semantic", "instance", "panoptic") for impl in ("detectron2", "fast")}
    results = run_evaluators(evaluators, (synthetic_outputs(spec, name, i) for i in range(spec.num_images)))
    # at 48x64 the few-pixel shifts of the predicted things leave little AP at strict IoUs
    for task, key, low, high in (("semantic", "mIoU", 30, 99), ("instance", "AP50", 2, 99),
                                 ("panoptic", "PQ", 10, 99)):
        stock, fast = results[(task, "detectron2")][0], results[(task, "fast")][0]
        assert max(metric_differences(stock, fast).values()) <= 1e-4, task
        (metrics,) = fast.values()
        assert low < metrics[key] < high, (task, metrics[key])  # a set that tells evaluators apart
        assert len(metrics) > 12  # per-class numbers included


def _small_synthetic_set(tmp_path, num_images: int = 6):
    spec = SyntheticSpec(num_images=num_images, height=48, width=64, segments=6, detections=10)
    return spec, register_synthetic_set(spec, str(tmp_path / "set"))


def test_semantic_ground_truth_of_8_and_16_bits_gives_the_stock_numbers(tmp_path):
    """8-bit label PNGs go through the evaluator's lookup table (the ignore label, 255, becomes
    "no class"); 16-bit ones (values above 255 possible) through integer arithmetic as in d2."""
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    from maskformer_d2.evaluation.semantic import FastSemSegEvaluator
    spec, name = _small_synthetic_set(tmp_path)
    pairs = [synthetic_outputs(spec, name, i) for i in range(spec.num_images)]
    folder = MetadataCatalog.get(name).sem_seg_root
    for bits in (8, 16):
        if bits == 16:  # the same labels rewritten as 16-bit PNGs
            for i in range(spec.num_images):
                path = f"{folder}/{i + 1:06d}.png"
                labels = np.array(Image.open(path)).astype(np.uint16)
                Image.fromarray(labels).save(path)
                assert np.array(Image.open(path)).dtype == np.uint16
        results = {}
        for cls in (SemSegEvaluator, FastSemSegEvaluator):
            evaluator = cls(name, distributed=False)
            evaluator.reset()
            for inputs, outputs in pairs:
                evaluator.process([inputs], [outputs])
            results[cls.__name__] = (evaluator.evaluate(), evaluator._conf_matrix.copy())
        (stock, stock_conf), (fast, fast_conf) = results["SemSegEvaluator"], results["FastSemSegEvaluator"]
        assert np.array_equal(stock_conf, fast_conf), bits
        assert stock_conf[:, -1].sum() > 0  # ignored pixels counted in the "no class" column
        assert max(metric_differences(stock, fast).values()) == 0, bits
        assert 30 < fast["sem_seg"]["mIoU"] < 100


def test_instance_evaluator_writes_no_pickle_unless_asked(tmp_path):
    """coco_instances_results.json as from detectron2; instances_predictions.pth (a pickle of
    the same results) only with write_predictions."""
    from maskformer_d2.evaluation.instance import FastCOCOEvaluator
    spec, name = _small_synthetic_set(tmp_path)
    for write, out in ((False, tmp_path / "plain"), (True, tmp_path / "with_pth")):
        evaluator = FastCOCOEvaluator(name, distributed=False, output_dir=str(out), write_predictions=write)
        evaluator.reset()
        for i in range(spec.num_images):
            evaluator.process(*([x] for x in synthetic_outputs(spec, name, i)))
        results = evaluator.evaluate()
        assert 0 < results["segm"]["AP50"] <= 100
        with open(out / "coco_instances_results.json") as f:
            assert len(json.load(f)) == spec.num_images * spec.detections
        assert (out / "instances_predictions.pth").exists() == write
    # detectron2's format: per image {"image_id", "instances": instances_to_coco_json(...)}
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    saved = torch.load(out / "instances_predictions.pth", weights_only=False)
    inputs, outputs = synthetic_outputs(spec, name, 0)
    assert saved[0] == {"image_id": 1, "instances": instances_to_coco_json(outputs["instances"], 1)}


def test_gray_label_pngs_read_by_opencv_as_pil_reads_them(tmp_path):
    """8- and 16-bit grayscale PNGs by OpenCV, the same array as detectron2's PIL loader; other
    PNGs (palette, colour, 1-bit) are left to PIL."""
    from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array

    from maskformer_d2.evaluation.semantic import _read_gray_png
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 40, (9, 13)).astype(np.uint8)
    images = {"gray8": Image.fromarray(labels), "gray16": Image.fromarray(labels.astype(np.uint16) * 300),
              "palette": Image.fromarray(labels).convert("P"), "rgb": Image.fromarray(labels).convert("RGB"),
              "bits": Image.fromarray(labels > 20)}
    for kind, image in images.items():
        path = str(tmp_path / f"{kind}.png")
        image.save(path)
        got = _read_gray_png(path)
        if kind.startswith("gray"):
            expected = load_image_into_numpy_array(path, dtype=None)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), kind
        else:
            assert got is None, kind


def test_semantic_evaluator_names_a_label_that_is_no_class(tmp_path):
    from detectron2.data import MetadataCatalog

    from maskformer_d2.evaluation.semantic import FastSemSegEvaluator
    spec, name = _small_synthetic_set(tmp_path)
    path = f"{MetadataCatalog.get(name).sem_seg_root}/000002.png"
    labels = np.array(Image.open(path))
    labels[5, 7] = 40  # 12 classes, ignore label 255
    Image.fromarray(labels).save(path)
    evaluator = FastSemSegEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process(*([x] for x in synthetic_outputs(spec, name, 0)))
    with pytest.raises(ValueError, match=r"000002.png: label 40 is neither a class \(0..11\) nor the ignore label 255"):
        evaluator.process(*([x] for x in synthetic_outputs(spec, name, 1)))


def _random_panoptic_pair(rng: np.random.Generator, categories):
    """Ground-truth and predicted id maps of blobs, with crowd, unlabelled and stray segments."""
    def blobs(n_segments: int, first_id: int) -> np.ndarray:
        coarse = rng.integers(0, n_segments + 1, size=(4, 6))
        ids = np.kron(coarse, np.ones((6, 6), dtype=np.int64))  # 24 x 36
        ids[ids > 0] += first_id - 1
        return ids

    gt = blobs(6, 1)
    pred = np.where(rng.random(gt.shape) < 0.85, gt + 100 * (gt > 0), blobs(5, 300))
    cat_ids = [c["id"] for c in categories]
    gt_segments = [{"id": int(i), "category_id": int(rng.choice(cat_ids)), "iscrowd": int(rng.random() < 0.2),
                    "area": int((gt == i).sum())} for i in np.unique(gt) if i > 0]
    gt_category = {s["id"]: s["category_id"] for s in gt_segments}
    pred_segments = [{"id": int(i), "category_id": gt_category.get(int(i) - 100, int(rng.choice(cat_ids)))
                      if rng.random() < 0.8 else int(rng.choice(cat_ids))} for i in np.unique(pred) if i > 0]
    return gt, gt_segments, pred, pred_segments


def test_panoptic_quality_in_memory_equals_panopticapi(tmp_path):
    """Random images against panopticapi's own per-image code, reading PNGs."""
    categories = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 7, "isthing": 0}]
    rng = np.random.default_rng(0)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    annotations, ours = [], PQStats(categories)
    for image_id in range(40):
        gt, gt_segments, pred, pred_segments = _random_panoptic_pair(rng, categories)
        file_name = f"{image_id}.png"
        Image.fromarray(id2rgb(gt)).save(tmp_path / "gt" / file_name)
        Image.fromarray(id2rgb(pred)).save(tmp_path / "pred" / file_name)
        annotations.append(({"image_id": image_id, "file_name": file_name, "segments_info": gt_segments},
                            {"image_id": image_id, "file_name": file_name,
                             "segments_info": json.loads(json.dumps(pred_segments))}))
        assert np.array_equal(read_panoptic_png(str(tmp_path / "gt" / file_name)), gt)
        accumulate_image(ours, gt, gt_segments, pred, pred_segments, image_id)
    reference = pq_compute_single_core(0, annotations, str(tmp_path / "gt"), str(tmp_path / "pred"),
                                       {c["id"]: c for c in categories})
    assert ours.tp.sum() > 20 and ours.fp.sum() > 20 and ours.fn.sum() > 20  # all three occur
    for i, category_id in enumerate(ours.category_ids):
        stat = reference.pq_per_cat[category_id]
        assert (ours.tp[i], ours.fp[i], ours.fn[i]) == (stat.tp, stat.fp, stat.fn), category_id
        assert ours.iou[i] == pytest.approx(stat.iou, abs=1e-9)
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        expected, expected_per_class = reference.pq_average({c["id"]: c for c in categories}, isthing)
        got = ours.results()[name]
        assert got == pytest.approx(expected, abs=1e-12), name


def test_pixel_index_by_8_bit_tables_equals_the_general_one():
    """32-bit ids go through two 256-entry tables on a remainder that tells the segment ids
    apart; ids absent from the segments (some sharing a remainder with one) get len(values)."""
    rng = np.random.default_rng(3)
    for trial in range(60):
        values = np.unique(rng.integers(0, 1 << (24 if trial % 2 else 7), int(rng.integers(1, 40))))
        strays = rng.integers(0, 1 << 24, 5)
        ids = rng.choice(np.concatenate([values, strays, values % 256]), (23, 29))
        expected = np.array([np.searchsorted(values, v) if v in values else len(values) for v in ids.reshape(-1)])
        general = _pixel_index(ids.reshape(-1).astype(np.int64), values)
        tables = _pixel_index(ids.reshape(-1).astype(np.uint32), values)
        assert np.array_equal(general, expected), trial
        assert tables.dtype == np.uint8 and np.array_equal(tables, expected), trial


def test_panoptic_counts_are_the_same_for_8_bit_and_wide_ids():
    """Small predicted ids and 32-bit ground truth take the 8-bit histogram; wide ones bincount."""
    categories = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 7, "isthing": 0}]
    rng = np.random.default_rng(4)
    narrow, wide = PQStats(categories), PQStats(categories)
    for image_id in range(30):
        gt, gt_segments, pred, pred_segments = _random_panoptic_pair(rng, categories)
        accumulate_image(narrow, gt.astype(np.uint32), gt_segments, pred - 50 * (pred > 0),
                         [{**s, "id": s["id"] - 50} for s in pred_segments], image_id)
        accumulate_image(wide, gt, gt_segments, pred + 1000 * (pred > 0),
                         [{**s, "id": s["id"] + 1000} for s in pred_segments], image_id)
    assert wide.tp.sum() > 10 and wide.fp.sum() > 10 and wide.fn.sum() > 10
    for field in ("tp", "fp", "fn", "iou"):
        assert np.array_equal(getattr(narrow, field), getattr(wide, field)), field


def test_label_counts_equal_numpy_bincount():
    rng = np.random.default_rng(5)
    for num_rows, num_cols in ((13, 7), (20, 30)):  # up to 256 pairs: a byte a pair; more: 2-D
        rows, cols = rng.integers(0, num_rows, (48, 64)), rng.integers(0, num_cols, (48, 64))
        expected = np.bincount((rows * num_cols + cols).reshape(-1), minlength=num_rows * num_cols)
        for dtype in (np.uint8, np.int64):
            got = pair_counts(rows.astype(dtype), cols.astype(dtype), num_rows, num_cols)
            assert got.dtype == np.int64 and np.array_equal(got, expected.reshape(num_rows, num_cols)), dtype
            assert np.array_equal(value_counts(rows.astype(dtype), 300), np.bincount(rows.reshape(-1), minlength=300))
    rows = rng.integers(0, 13, (48, 64))
    with pytest.raises(ValueError, match="values up to 12 counted into 10 bins"):
        value_counts(rows.astype(np.uint8), 10)


def test_panoptic_quality_refuses_an_inconsistent_prediction():
    stats = PQStats([{"id": 1, "isthing": 1}])
    ids = np.ones((4, 4), dtype=np.int64)
    with pytest.raises(KeyError, match="segment 1 is in the panoptic map but not in segments_info"):
        accumulate_image(stats, ids, [{"id": 1, "category_id": 1, "iscrowd": 0}], ids, [], image_id=3)
    with pytest.raises(KeyError, match="unknown category_id 9"):
        accumulate_image(stats, ids, [{"id": 1, "category_id": 1, "iscrowd": 0}], ids,
                         [{"id": 1, "category_id": 9}], image_id=3)


def test_all_masks_of_an_image_encode_to_pycocotools_strings():
    rng = np.random.default_rng(1)
    masks = torch.from_numpy(rng.random((7, 37, 53)) < 0.3)
    masks[0] = False
    masks[1] = True
    expected = [coco_mask.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in masks]
    got = encode_masks(masks)
    assert [r["counts"] for r in got] == [e["counts"].decode() for e in expected]
    assert [r["size"] for r in got] == [[37, 53]] * 7
    assert encode_masks(torch.zeros((0, 5, 5), dtype=torch.bool)) == []
    # more masks than a group, width a multiple of 4 (rows found 4 pixels at a time), small
    # masks after large ones (a reused buffer must be cleared)
    masks = torch.zeros((21, 30, 44), dtype=torch.bool)
    for k in range(21):
        top, left = (k * 7) % 25, (k * 11) % 40
        masks[k, top:top + 1 + k % 5, left:left + 2 + k % 3] = True
    masks[3] = torch.from_numpy(rng.random((30, 44)) < 0.5)
    masks[4, -1, -1] = True
    expected = [coco_mask.encode(np.asfortranarray(m.numpy().astype(np.uint8)))["counts"].decode() for m in masks]
    assert [r["counts"] for r in encode_masks(masks)] == expected
    assert [r["counts"] for r in encode_masks(masks.to(torch.uint8))] == expected


def test_results_json_is_json_dumps_of_the_result_dicts():
    from detectron2.structures import Boxes, Instances
    rng = np.random.default_rng(4)
    compacts = []
    for image_id, n in ((7, 5), (8, 0), (9, 3)):
        instances = Instances((23, 31))
        instances.pred_boxes = Boxes(torch.from_numpy(rng.random((n, 4)).astype(np.float32) * 20).sort(1).values)
        instances.scores = torch.from_numpy(rng.random(n).astype(np.float32))
        instances.pred_classes = torch.from_numpy(rng.integers(0, 5, n))
        instances.pred_masks = torch.from_numpy(rng.random((n, 23, 31)) < 0.4)
        compacts.append(compact_results(instances, image_id))
    # a mask whose RLE holds a backslash (JSON escapes it): 44 zeros down the columns, then ones
    instances = Instances((8, 10))
    instances.pred_boxes, instances.scores = Boxes(torch.zeros(1, 4)), torch.tensor([0.5])
    instances.pred_classes, instances.pred_masks = torch.tensor([1]), torch.ones(1, 8, 10, dtype=torch.bool)
    instances.pred_masks[0, :, :5] = False
    instances.pred_masks[0, :4, 5] = False
    compacts.append(compact_results(instances, 10))
    assert "\\" in compacts[-1]["counts"][0]
    compacts.append({**compacts[0], "scores": np.array([np.nan, 1, 2, 3, 4], np.float32)})  # NaN: as json
    expected = json.dumps([r for c in compacts for r in expand_results(c)])
    assert results_json(compacts) == expected
    assert json.loads(expected)[0]["segmentation"]["counts"] == compacts[0]["counts"][0]
    assert results_json([]) == json.dumps([])
    # mask AP's dicts: the same without the boxes
    assert [r for r in expand_results(compacts[0], boxes=False)] == \
        [{k: v for k, v in r.items() if k != "bbox"} for r in expand_results(compacts[0])]


def test_semantic_boundaries_equal_detectron2s(tmp_path):
    from detectron2.evaluation import SemSegEvaluator

    from maskformer_d2.evaluation.semantic import FastSemSegEvaluator
    rng = np.random.default_rng(5)
    for h, w in ((480, 640), (3, 40), (61, 17)):
        labels = _block_labels(rng, h, w)
        ours = FastSemSegEvaluator._mask_to_boundary(None, labels)
        stock = SemSegEvaluator._mask_to_boundary(None, labels)
        assert ours.dtype == stock.dtype == np.uint8
        np.testing.assert_array_equal(ours, stock)
        assert 0 < np.count_nonzero(ours) < ours.size or min(h, w) < 8


def _block_labels(rng, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 labels 0..12 in blocks (regions with edges, as in a label map)."""
    blocks = rng.integers(0, 13, ((h + 7) // 8, (w + 7) // 8), dtype=np.uint8)
    return np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w].copy()


def test_mask_boxes_are_detectron2s_bounding_boxes():
    from detectron2.structures import BitMasks
    rng = np.random.default_rng(2)
    masks = torch.zeros((6, 31, 45), dtype=torch.bool)
    masks[0, 3:9, 10:30] = True
    masks[1, 30, 44] = True  # the last pixel
    masks[2, 0, 0] = True  # the first
    masks[4] = torch.from_numpy(rng.random((31, 45)) < 0.05)
    masks[5] = True
    boxes = mask_boxes(masks)  # masks[3] stays empty
    assert torch.equal(boxes, BitMasks(masks).get_bounding_boxes().tensor)
    assert boxes[0].tolist() == [10, 3, 30, 9] and boxes[1].tolist() == [44, 30, 45, 31]
    assert boxes[3].tolist() == [0, 0, 0, 0] and boxes[5].tolist() == [0, 0, 45, 31]
    assert mask_boxes(torch.zeros((0, 4, 4), dtype=torch.bool)).shape == (0, 4)


def test_argmax_over_the_first_dimension_keeps_the_first_of_ties():
    x = torch.randn(5, 9, 11)
    x[:, 0, 0] = 1.0  # a tie: the first index wins, as torch.argmax(0)
    assert torch.equal(argmax_over_first_dim(x), x.argmax(0))
    assert argmax_over_first_dim(x)[0, 0] == 0
    for n in (12, 32, 150):
        x = torch.randn(9, 11, n).permute(2, 0, 1)  # laid out (H, W, N), as semantic scores are
        x[:, 0, 0] = 1.0
        x[[3, 7], 1, 2] = 9.0
        for scores in (x, x.contiguous(), x.double()):
            got = argmax_over_first_dim(scores)
            assert got.dtype == torch.int64 and torch.equal(got, x.argmax(0))
            assert got[0, 0] == 0 and got[1, 2] == 3


# ------------------------------------------------------------------------ batched inference
def _inputs(sizes, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h, "width": w}
            for h, w in sizes]


def test_a_batch_gives_each_image_its_batch_of_one_output():
    cfg = set_enabled_tasks(tiny_cfg(), ["semantic", "instance", "panoptic"])
    model = build_model(cfg).eval()
    # 64x64 and 60x62 pad to the same size (one group), 96x64 to another
    inputs = _inputs([(64, 64), (96, 64), (60, 62), (64, 64), (96, 64)])
    with torch.no_grad():
        batched = model(inputs)
        alone = [model([x])[0] for x in inputs]
    assert len(batched) == len(inputs)
    for b, a, x in zip(batched, alone, inputs):
        assert b["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, x["height"], x["width"])
        torch.testing.assert_close(b["sem_seg"], a["sem_seg"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b["instances"].scores, a["instances"].scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(b["panoptic_seg"][0], a["panoptic_seg"][0])
    assert model.padded_size(inputs[0]["image"]) == model.padded_size(inputs[2]["image"])
    assert model.padded_size(inputs[0]["image"]) != model.padded_size(inputs[1]["image"])


def test_the_test_loader_batches_by_the_config(tmp_path):
    from maskformer_d2.data import register_shapes
    from maskformer_d2.engine import Trainer
    cfg = tiny_cfg()
    cfg.defrost()
    cfg.DATASETS.SHAPES.ROOT = str(tmp_path)
    cfg.DATASETS.SHAPES.NUM_TRAIN, cfg.DATASETS.SHAPES.NUM_VAL = 2, 11
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.IMS_PER_BATCH = 4
    register_shapes(cfg)
    batches = list(Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0]))
    assert [len(b) for b in batches] == [4, 4, 3]


# ------------------------------------------------------------------------------------ bf16
def test_bf16_runs_the_network_under_autocast_with_float32_outputs():
    cfg = set_enabled_tasks(tiny_cfg(), ["semantic", "panoptic"])
    model = build_model(cfg).eval()
    inputs = _inputs([(64, 64)])
    with torch.no_grad():
        fp32 = model(inputs)[0]
        model.precision = "bf16"  # what TEST.PRECISION bf16 resolves to where the CPU has bf16 units
        raw = model.run_network(model.preprocess_image(inputs).tensor)
        bf16 = model(inputs)[0]
    assert raw["pred_logits"].dtype == torch.float32 and raw["pred_masks"].dtype == torch.float32
    assert bf16["sem_seg"].dtype == torch.float32
    difference = (bf16["sem_seg"] - fp32["sem_seg"]).abs().max()
    assert 0 < difference < 0.1  # rounded to bf16, not another model


def test_bf16_where_the_cpu_has_no_bf16_units_is_fp32_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="maskformer_d2.inference.precision"):
        assert precision_module.resolve_precision("bf16", torch.device("cpu")) == "fp32"
    assert len(caplog.records) == 1
    assert "no bf16 units" in caplog.records[0].getMessage() and "fp32" in caplog.records[0].getMessage()
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    assert precision_module.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert precision_module.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="TEST.PRECISION is 'fp16'; use one of fp32, bf16"):
        precision_module.resolve_precision("fp16", torch.device("cpu"))


def test_precision_flag_sets_the_config_key(tmp_path):
    from maskformer_d2.engine.command import argument_parser, build_cfg
    config = str(REPO / "configs" / "shapes" / "maskformer_R18_shapes.yaml")
    for flags, expected in (([], "fp32"), (["--precision", "bf16"], "bf16")):
        args = argument_parser().parse_args(["--config-file", config, *flags, "OUTPUT_DIR", str(tmp_path)])
        assert build_cfg(args).TEST.PRECISION == expected
