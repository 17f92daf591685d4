"""Dataset registration, the built-in shapes dataset, and the datasets/prepare_*.py scripts."""
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import Boxes, Instances
from panopticapi.utils import rgb2id
from PIL import Image

import maskformer_d2.data  # noqa: F401  (registers the datasets)
from maskformer_d2.data import (
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    prepare_shapes,
    register_shapes,
)
from maskformer_d2.data.datasets import shapes as shapes_module
from maskformer_d2.data.datasets.builtin_meta import load_categories
from maskformer_d2.data.datasets.shapes import writer as shapes_writer

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train=3, num_val=4, image_size=64)
SHAPES_NAMES = [f"shapes_{kind}_{split}" for kind in ("sem_seg", "instance", "panoptic")
                for split in ("train", "val")]


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """shapes_* registered on a small copy in a temporary root (defaults restored after)."""
    root = tmp_path_factory.mktemp("shapes_root")
    spec = register_shapes(str(root), **SMALL)
    yield spec
    register_shapes()


# ------------------------------------------------------------------ shapes: generation
def test_generation_is_deterministic_and_complete(tmp_path):
    a = prepare_shapes(str(tmp_path / "a"), **SMALL)
    b = prepare_shapes(str(tmp_path / "b"), **SMALL)
    # drawing in two processes writes the same bytes
    c = prepare_shapes(str(tmp_path / "c"), workers=2, **dict(SMALL, num_train=130))
    d = prepare_shapes(str(tmp_path / "d"), workers=1, **dict(SMALL, num_train=130))
    assert _files(c) == _files(d)
    files_a, files_b = _files(a), _files(b)
    assert files_a == files_b
    assert len([f for f in files_a if f.startswith("images/train/")]) == 3
    assert len([f for f in files_a if f.startswith("panoptic/val/")]) == 4
    assert {"shapes.json", "annotations/panoptic_val.json", "annotations/instances_train.json",
            "sem_seg/val/000004.png"} <= set(files_a)
    image = np.asarray(Image.open(os.path.join(a, "images/val/000001.png")))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 10


def test_reuse_regenerate_and_no_half_dataset_after_a_crash(tmp_path, monkeypatch):
    folder = prepare_shapes(str(tmp_path), **SMALL)
    marker = os.path.join(folder, "shapes.json")
    mtime = os.stat(marker).st_mtime_ns
    assert prepare_shapes(str(tmp_path), **SMALL) == folder
    assert os.stat(marker).st_mtime_ns == mtime  # reused, not rewritten

    with open(marker, "w") as f:  # parameters differ -> regenerated in place
        json.dump({"generator_version": -1}, f)
    assert prepare_shapes(str(tmp_path), **SMALL) == folder
    with open(marker) as f:
        assert json.load(f)["generator_version"] == shapes_module.GENERATOR_VERSION
    other = prepare_shapes(str(tmp_path), **dict(SMALL, num_val=2))
    assert other != folder and os.path.isdir(folder)

    real = shapes_writer._generate_split

    def crash_on_val(spec, split, out, workers=1):
        if split == "val":
            raise KeyboardInterrupt("killed")
        real(spec, split, out, workers)

    monkeypatch.setattr(shapes_writer, "_generate_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_shapes(str(tmp_path / "crash"), **SMALL)
    assert os.listdir(tmp_path / "crash") == []  # no half dataset, no temporary folder


def test_default_root_comes_from_the_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKFORMER_D2_CACHE", str(tmp_path))
    assert shapes_module.default_shapes_root() == str(tmp_path / "shapes")
    monkeypatch.delenv("MASKFORMER_D2_CACHE")
    assert shapes_module.default_shapes_root().endswith(os.path.join(".cache", "maskformer_d2", "shapes"))


def test_registration_reads_the_config_and_generates_nothing(tmp_path):
    from detectron2.config import get_cfg

    from maskformer_d2.config import add_maskformer_config

    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.DATASETS.SHAPES.ROOT = str(tmp_path)
    cfg.DATASETS.SHAPES.NUM_TRAIN, cfg.DATASETS.SHAPES.NUM_VAL = 5, 2
    try:
        spec = register_shapes(cfg)
        assert (spec.num_train, spec.num_val, spec.image_size) == (5, 2, 128)
        assert spec.folder.startswith(str(tmp_path)) and os.listdir(tmp_path) == []
        assert MetadataCatalog.get("shapes_panoptic_val").panoptic_root.startswith(spec.folder)
    finally:
        register_shapes()


# ------------------------------------------------------------------ shapes: formats
def test_registered_names_and_metadata(shapes):
    assert set(SHAPES_NAMES) <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("shapes_panoptic_val")
    assert meta.thing_classes == ["circle", "square", "triangle", "star"]
    assert meta.stuff_classes == ["circle", "square", "triangle", "star", "sky", "grass", "wall"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
    assert meta.stuff_dataset_id_to_contiguous_id == {i + 1: i for i in range(7)}
    assert meta.ignore_label == 255 and meta.evaluator_type == "coco_panoptic_seg"
    for key in ("panoptic_root", "panoptic_json", "json_file", "sem_seg_root", "image_root"):
        assert getattr(meta, key).startswith(shapes.folder)
    assert MetadataCatalog.get("shapes_instance_train").evaluator_type == "coco"
    assert MetadataCatalog.get("shapes_sem_seg_val").evaluator_type == "sem_seg"


def test_the_three_formats_agree_pixel_for_pixel(shapes):
    dicts = DatasetCatalog.get("shapes_panoptic_val")
    assert [d["image_id"] for d in dicts] == [1, 2, 3, 4]
    num_things = 0
    for d in dicts:
        assert (d["height"], d["width"]) == (64, 64)
        sem = np.asarray(Image.open(d["sem_seg_file_name"]))
        pan = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        covered = np.zeros_like(sem, dtype=bool)
        thing_masks = []
        for s in d["segments_info"]:
            mask = pan == s["id"]
            assert mask.sum() == s["area"] > 0 and s["iscrowd"] == 0
            assert (sem[mask] == s["category_id"]).all()  # semantic label = segment category
            assert s["isthing"] == (s["category_id"] < 4)
            covered |= mask
            if s["isthing"]:
                thing_masks.append((s["category_id"], mask))
        assert (sem[~covered] == 255).all() and (pan[~covered] == 0).all()  # void agrees
        # instance annotations (contiguous ids after loading) are exactly the thing segments
        annos = d["annotations"]
        assert len(annos) == len(thing_masks)
        for a, (cat, mask) in zip(annos, thing_masks):
            assert a["category_id"] == cat and a["iscrowd"] == 0
            assert np.array_equal(mask_util.decode(a["segmentation"]).astype(bool), mask)
        num_things += len(annos)
    assert num_things >= 2 * len(dicts)  # 2-6 things drawn per image, few dropped
    assert DatasetCatalog.get("shapes_instance_val")[0]["annotations"][0]["category_id"] in range(4)
    sem_dicts = DatasetCatalog.get("shapes_sem_seg_val")
    assert [os.path.basename(d["sem_seg_file_name"]) for d in sem_dicts] == [
        f"{i:06d}.png" for i in range(1, 5)]


def test_all_three_mappers_read_the_shapes_dicts(shapes):
    d = DatasetCatalog.get("shapes_panoptic_train")[0]
    kw = dict(augmentations=[], image_format="RGB", ignore_label=255, num_classes=7)
    sem_out = MaskFormerSemanticDatasetMapper(True, **kw)(d)
    pan_out = MaskFormerPanopticDatasetMapper(True, **kw)(d)
    ins_out = MaskFormerInstanceDatasetMapper(True, **kw)(d)
    assert sem_out["sem_seg"].equal(pan_out["sem_seg"])
    pan_inst, ins_inst = pan_out["instances"], ins_out["instances"]
    things = pan_inst.gt_classes < 4
    assert pan_inst.gt_classes[things].tolist() == ins_inst.gt_classes.tolist()
    assert pan_inst.gt_masks[things].equal(ins_inst.gt_masks)
    # the semantic targets are the union of the panoptic ones per class
    for cls, mask in zip(sem_out["instances"].gt_classes, sem_out["instances"].gt_masks):
        assert mask.equal(pan_inst.gt_masks[pan_inst.gt_classes == cls].any(0))


def test_detectron2_evaluators_score_the_ground_truth_100(shapes, tmp_path):
    """One split, three evaluators: GT given as the prediction is perfect for each."""
    name = "shapes_panoptic_val"
    dicts = DatasetCatalog.get(name)
    evaluators = [SemSegEvaluator(name, distributed=False),
                  COCOPanopticEvaluator(name, str(tmp_path)),
                  COCOEvaluator(name, tasks=("segm",), distributed=False, output_dir=None)]
    for ev in evaluators:
        ev.reset()
    for d in dicts:
        sem = torch.from_numpy(np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64))
        sem_onehot = torch.nn.functional.one_hot(sem.clamp(max=6), 7).permute(2, 0, 1).float()
        pan = torch.from_numpy(rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]))).astype(np.int32))
        segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                    for s in d["segments_info"]]
        things = [s for s in d["segments_info"] if s["isthing"]]
        inst = Instances((d["height"], d["width"]))
        inst.pred_masks = torch.stack([pan == s["id"] for s in things])
        inst.pred_classes = torch.tensor([s["category_id"] for s in things])
        inst.scores = torch.ones(len(things))
        inst.pred_boxes = Boxes(torch.zeros(len(things), 4))
        inputs = [{"file_name": d["file_name"], "image_id": d["image_id"],
                   "height": d["height"], "width": d["width"]}]
        outputs = [{"sem_seg": sem_onehot, "panoptic_seg": (pan, segments), "instances": inst}]
        for ev in evaluators:
            ev.process(inputs, outputs)
    sem_res = evaluators[0].evaluate()["sem_seg"]
    pan_res = evaluators[1].evaluate()["panoptic_seg"]
    ins_res = evaluators[2].evaluate()["segm"]
    assert sem_res["mIoU"] == pytest.approx(100.0) and sem_res["pACC"] == pytest.approx(100.0)
    assert pan_res["PQ"] == pytest.approx(100.0) and pan_res["PQ_th"] == pytest.approx(100.0)
    assert pan_res["PQ_st"] == pytest.approx(100.0)
    assert ins_res["AP"] == pytest.approx(100.0)


def test_panoptic_evaluator_with_classes_reports_each_class_pq(shapes, tmp_path):
    """The ground truth with every "circle" segment removed: PQ-circle 0, every other class 100,
    and detectron2's own PQ (kept as is) is the mean of the per-class numbers."""
    from maskformer_d2.evaluation import PanopticEvaluatorWithClasses

    name = "shapes_panoptic_val"
    meta = MetadataCatalog.get(name)
    circle = meta.stuff_classes.index("circle")
    evaluator = PanopticEvaluatorWithClasses(name, str(tmp_path))
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        pan = torch.from_numpy(rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]))).astype(np.int32))
        segments = []
        for s in d["segments_info"]:
            if s["category_id"] == circle:
                pan[pan == s["id"]] = 0
            else:
                segments.append({"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]})
        inputs = [{"file_name": d["file_name"], "image_id": d["image_id"], "height": d["height"],
                   "width": d["width"]}]
        evaluator.process(inputs, [{"panoptic_seg": (pan, segments)}])
    res = evaluator.evaluate()["panoptic_seg"]
    per_class = {k[3:]: v for k, v in res.items() if k.startswith("PQ-")}
    assert sorted(per_class) == sorted(meta.stuff_classes)
    assert per_class["circle"] == 0.0
    assert all(v == pytest.approx(100.0) for k, v in per_class.items() if k != "circle")
    assert res["PQ"] == pytest.approx(100.0 * 6 / 7) == pytest.approx(np.mean(list(per_class.values())))


# ------------------------------------------------------------------ official datasets
def test_official_names_are_registered_lazily_with_their_class_lists():
    for name, num_classes, ignore in [("ade20k_full_sem_seg_train", 847, 65535),
                                      ("coco_2017_test_stuff_10k_sem_seg", 171, 255),
                                      ("mapillary_vistas_sem_seg_val", 65, 65),
                                      ("ade20k_panoptic_val", 150, 255)]:
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == num_classes and meta.ignore_label == ignore
    assert MetadataCatalog.get("ade20k_full_sem_seg_val").stuff_classes[:2] == [
        "wall", "building, edifice"]
    stuff = MetadataCatalog.get("coco_2017_train_stuff_10k_sem_seg")
    assert stuff.stuff_classes[79:81] == ["toothbrush", "banner"]
    assert stuff.stuff_dataset_id_to_contiguous_id[92] == 80
    pan = MetadataCatalog.get("ade20k_panoptic_train")
    assert len(pan.thing_dataset_id_to_contiguous_id) == 100 and pan.thing_dataset_id_to_contiguous_id[7] == 7
    assert len(pan.stuff_dataset_id_to_contiguous_id) == 150
    ins = MetadataCatalog.get("ade20k_instance_val")
    assert len(ins.thing_classes) == 100 and ins.thing_classes[0] == "bed"
    assert ins.thing_dataset_id_to_contiguous_id[7] == 0
    assert len(MetadataCatalog.get("ade20k_sem_seg_train").stuff_colors) == 150
    assert MetadataCatalog.get("mapillary_vistas_sem_seg_train").stuff_classes[-1] == "Ego Vehicle"
    assert len(MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg").thing_classes) == 80


@pytest.mark.parametrize("name,script", [
    ("ade20k_full_sem_seg_val", "prepare_ade20k_full_sem_seg.py"),
    ("ade20k_panoptic_val", "prepare_ade20k_pan_seg.py"),
    ("ade20k_instance_train", "prepare_ade20k_ins_seg.py"),
    ("coco_2017_train_stuff_10k_sem_seg", "prepare_coco_stuff_10k_v1.0_sem_seg.py"),
])
def test_missing_dataset_names_path_and_script(name, script):
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    if os.path.isdir(os.path.join(root, "ADEChallengeData2016")) or os.path.isdir(
            os.path.join(root, "ADE20K_2021_17_01")) or os.path.isdir(os.path.join(root, "coco")):
        pytest.skip(f"real datasets present under {root}")
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(name)
    message = str(e.value)
    assert "\n" not in message and name in message and script in message and root in message


def _ade20k_instance_with(tmp_path, json_text: str) -> str:
    from maskformer_d2.data.datasets.builtin import register_ade20k_instance

    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "ade20k_instance_val.json").write_text(json_text)
    for name in ("ade20k_instance_train", "ade20k_instance_val"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_ade20k_instance(str(tmp_path))
    return str(base / "ade20k_instance_val.json")


def test_empty_annotation_file_names_dataset_and_file(tmp_path):
    json_file = _ade20k_instance_with(tmp_path, "")  # an empty annotation file
    try:
        with pytest.raises(ValueError) as e:
            DatasetCatalog.get("ade20k_instance_val")
        message = str(e.value)
        assert "\n" not in message and "dataset ade20k_instance_val" in message
        assert json_file in message and "JSONDecodeError" in message
    finally:
        from maskformer_d2.data.datasets.builtin import register_ade20k_instance

        for name in ("ade20k_instance_train", "ade20k_instance_val"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_ade20k_instance(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def test_dataset_without_images_is_an_error_naming_it(tmp_path):
    from maskformer_d2.data.datasets.builtin import lazy_loader

    with pytest.raises(ValueError, match=f"dataset mine: no images in {tmp_path}"):
        lazy_loader("mine", lambda: [], [str(tmp_path)], "unused")()


# ------------------------------------------------------------------ prepare scripts
SCRIPTS = ["prepare_ade20k_sem_seg", "prepare_ade20k_full_sem_seg",
           "prepare_coco_stuff_10k_v1.0_sem_seg", "prepare_ade20k_pan_seg",
           "prepare_ade20k_ins_seg", "prepare_coco_semantic_annos_from_panoptic_images"]


def _script(name):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"),
                                                  REPO / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_prepare_script_help_and_arguments(name, capsys, tmp_path):
    script = _script(name)
    with pytest.raises(SystemExit) as e:
        script.parse_args(["--help"])
    assert e.value.code == 0 and "--root" in capsys.readouterr().out
    assert script.parse_args(["--root", str(tmp_path)]).root == str(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):  # nothing there yet
        script.main(["--root", str(tmp_path)])


def test_prepare_ade20k_sem_seg_shifts_labels(tmp_path):
    src = tmp_path / "ADEChallengeData2016" / "annotations"
    for split in ("training", "validation"):
        (src / split).mkdir(parents=True)
        Image.fromarray(np.array([[0, 1, 150]], np.uint8)).save(src / split / "a.png")
    assert _script("prepare_ade20k_sem_seg").main(["--root", str(tmp_path)]) == 0
    out = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "a.png"
    assert np.asarray(Image.open(out)).tolist() == [[255, 0, 149]]


def test_prepare_coco_semantic_from_panoptic_matches_shapes(shapes, tmp_path):
    p = shapes.paths("val")
    _script("prepare_coco_semantic_annos_from_panoptic_images").main(
        ["--panoptic-json", p["panoptic_json"], "--panoptic-root", p["panoptic_root"],
         "--output-root", str(tmp_path), "--workers", "1"])
    for name in sorted(os.listdir(p["sem_seg_root"])):
        assert np.array_equal(np.asarray(Image.open(tmp_path / name)),
                              np.asarray(Image.open(os.path.join(p["sem_seg_root"], name))))


def _fake_ade20k(root):
    """One tiny image per split: wall (class 1) on top, a bed instance (class 8) below."""
    base = root / "ADEChallengeData2016"
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        for sub in ("images", "annotations", "annotations_instance"):
            (base / sub / split).mkdir(parents=True)
        Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(base / "images" / split / f"{stem}.jpg")
        sem = np.zeros((8, 10), np.uint8)
        sem[:4] = 1  # wall (stuff)
        sem[4:, :6] = 8  # bed (thing)
        Image.fromarray(sem).save(base / "annotations" / split / f"{stem}.png")
        ins = np.zeros((8, 10, 3), np.uint8)
        ins[4:, :6, 0] = 1  # instance class 1 = bed
        ins[4:, :6, 1] = 1  # instance id 1
        Image.fromarray(ins).save(base / "annotations_instance" / split / f"{stem}.png")
    return base


def test_prepare_ade20k_panoptic_and_instance_annotations(tmp_path):
    from maskformer_d2.data.datasets.builtin_meta import ade20k_panoptic_meta
    from maskformer_d2.data.datasets.coco_formats import load_panoptic_json

    base = _fake_ade20k(tmp_path)
    for name in ("prepare_ade20k_sem_seg", "prepare_ade20k_pan_seg", "prepare_ade20k_ins_seg"):
        assert _script(name).main(["--root", str(tmp_path)]) == 0
    with open(base / "ade20k_instance_val.json") as f:
        ins = json.load(f)
    assert [a["category_id"] for a in ins["annotations"]] == [7]
    assert ins["annotations"][0]["area"] == 24 and ins["annotations"][0]["bbox"] == [0, 4, 6, 4]
    assert ins["images"][0] == {"id": "ADE_val_00000001", "file_name": "ADE_val_00000001.jpg",
                                "width": 10, "height": 8}
    assert len(ins["categories"]) == 100
    dicts = load_panoptic_json(str(base / "ade20k_panoptic_val.json"), str(base / "images/validation"),
                               str(base / "ade20k_panoptic_val"),
                               str(base / "annotations_detectron2/validation"), ade20k_panoptic_meta())
    (d,) = dicts
    segs = {s["category_id"]: s for s in d["segments_info"]}
    assert set(segs) == {0, 7} and segs[7]["isthing"] and not segs[0]["isthing"]
    assert segs[0]["area"] == 40 and segs[7]["area"] == 24
    pan = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
    assert (pan[:4] == segs[0]["id"]).all() and (pan[4:, :6] == segs[7]["id"]).all()
    assert (pan[4:, 6:] == 0).all()  # bed pixels of the semantic map without an instance: void


def test_prepare_coco_stuff_10k_reads_mat_labels(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "coco" / "coco_stuff_10k"
    for sub in ("imageLists", "images", "annotations"):
        (base / sub).mkdir(parents=True)
    for split in ("train", "test"):
        (base / "imageLists" / f"{split}.txt").write_text(f"img_{split}\n")
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(base / "images" / f"img_{split}.jpg")
        savemat(base / "annotations" / f"img_{split}.mat", {"S": np.array([[1, 2, 3], [94, 2, 2]])})
    assert _script("prepare_coco_stuff_10k_v1.0_sem_seg").main(["--root", str(tmp_path)]) == 0
    out = np.asarray(Image.open(base / "annotations_detectron2" / "test" / "img_test.png"))
    assert out.tolist() == [[255, 0, 1], [92, 0, 0]]
    assert (base / "images_detectron2" / "train" / "img_train.jpg").is_file()


def test_prepare_ade20k_full_maps_object_ids_to_847_classes(tmp_path):
    base = tmp_path / "ADE20K_2021_17_01"
    folder = "ADE20K_2021_17_01/images/ADE/validation/x"
    (tmp_path / folder).mkdir(parents=True)
    Image.fromarray(np.full((4, 5, 3), 50, np.uint8)).save(tmp_path / folder / "ADE_val_00000001.jpg")
    seg = np.zeros((4, 5, 3), np.uint8)
    wall = load_categories("ade20k_full_847")[0]["id"]  # 2978 = R / 10 * 256 + G
    seg[:2, :, 0], seg[:2, :, 1] = wall // 256 * 10, wall % 256
    seg[2:, :, 1] = 1  # object class 1: not one of the 847
    Image.fromarray(seg).save(tmp_path / folder / "ADE_val_00000001_seg.png")
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": [folder], "filename": ["ADE_val_00000001.jpg"]}, f)
    assert _script("prepare_ade20k_full_sem_seg").main(["--root", str(tmp_path)]) == 0
    labels = np.asarray(Image.open(base / "annotations_detectron2/validation/ADE_val_00000001.tif"))
    assert labels.dtype == np.uint16 and labels[:2].tolist() == [[0] * 5] * 2
    assert (labels[2:] == 65535).all()
    assert (base / "images_detectron2/validation/ADE_val_00000001.jpg").is_file()


def test_leftovers_of_a_killed_generation_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stem = os.path.basename(shapes_module.shapes_spec(str(tmp_path), **SMALL).folder)
    (tmp_path / f"{stem}.tmp-{dead}-abc123").mkdir()  # its process was killed
    (tmp_path / f"{stem}.old-{dead}-def456").mkdir()
    (tmp_path / f"{stem}.tmp-{os.getpid()}-ghi789").mkdir()  # a live generation's
    prepare_shapes(str(tmp_path), **SMALL)
    assert sorted(os.listdir(tmp_path)) == sorted([stem, f"{stem}.tmp-{os.getpid()}-ghi789"])
