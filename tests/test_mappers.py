"""Dataset mappers: targets built from crafted label files, padding, error handling, registry."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import BoxMode, polygons_to_bitmask
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer_d2.config import add_maskformer_config
from maskformer_d2.data import (
    DATASET_MAPPER_REGISTRY,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_augmentations,
    build_mapper,
    register_mapper,
)
from maskformer_d2.errors import ImageReadError

H, W = 20, 30


def _image(tmp_path, name="img.png", h=H, w=W):
    rng = np.random.default_rng(0)
    path = tmp_path / name
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def _png(tmp_path, name, array):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return str(path)


def _mapper(cls, augs=(), **kw):
    args = dict(augmentations=list(augs), image_format="RGB", ignore_label=255,
                size_divisibility=-1, num_classes=3)
    args.update(kw)
    return cls(True, **args)


def _cfg(**overrides):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.DATASETS.TRAIN = ()
    for k, v in overrides.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, v)
    return cfg


# ------------------------------------------------------------------ semantic
def test_semantic_one_mask_per_class_ignore_excluded_and_padding_uses_ignore(tmp_path):
    labels = np.full((H, W), 255, np.uint8)
    labels[:10, :] = 2
    labels[10:, :15] = 0
    d = {"file_name": _image(tmp_path), "sem_seg_file_name": _png(tmp_path, "sem.png", labels),
         "height": H, "width": W, "image_id": 7}
    out = _mapper(MaskFormerSemanticDatasetMapper, size_divisibility=32)(d)

    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 32, 32)
    assert (out["image"][:, H:, :] == 128).all() and (out["image"][:, :, W:] == 128).all()
    assert out["image"][:, :H, :W].equal(
        torch.from_numpy(np.asarray(Image.open(d["file_name"])).transpose(2, 0, 1).copy()))
    sem = out["sem_seg"]
    assert sem.dtype == torch.int64 and sem.shape == (32, 32)
    assert (sem[H:, :] == 255).all() and (sem[:, W:] == 255).all()
    assert sem[:H, :W].equal(torch.from_numpy(labels.astype(np.int64)))

    inst = out["instances"]
    assert inst.image_size == (32, 32)
    assert inst.gt_classes.tolist() == [0, 2] and inst.gt_classes.dtype == torch.int64
    assert inst.gt_masks.dtype == torch.bool and inst.gt_masks.shape == (2, 32, 32)
    for mask, cls in zip(inst.gt_masks, [0, 2]):
        assert mask[:H, :W].equal(torch.from_numpy(labels == cls))
        assert not mask[H:, :].any() and not mask[:, W:].any()
    # the rest of the dataset dict is kept, label file names are consumed
    assert out["image_id"] == 7 and out["height"] == H and out["file_name"] == d["file_name"]
    assert "sem_seg_file_name" not in out


def test_semantic_all_ignored_gives_zero_instances(tmp_path):
    d = {"file_name": _image(tmp_path),
         "sem_seg_file_name": _png(tmp_path, "sem.png", np.full((H, W), 255, np.uint8))}
    inst = _mapper(MaskFormerSemanticDatasetMapper)(d)["instances"]
    assert inst.gt_classes.shape == (0,) and inst.gt_classes.dtype == torch.int64
    assert inst.gt_masks.shape == (0, H, W)


def test_out_of_range_label_names_file_and_value(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[3, 4] = 7
    d = {"file_name": _image(tmp_path), "sem_seg_file_name": _png(tmp_path, "bad_sem.png", labels)}
    with pytest.raises(ValueError, match=r"bad_sem\.png: label 7 is outside \[0, 3\)") as e:
        _mapper(MaskFormerSemanticDatasetMapper)(d)
    assert "\n" not in str(e.value)


def test_16bit_labels_with_large_ignore_value(tmp_path):
    """ADE20K-full: uint16 TIFF labels, ignore 65535."""
    labels = np.full((H, W), 65535, np.uint16)
    labels[:5] = 800
    d = {"file_name": _image(tmp_path), "sem_seg_file_name": _png(tmp_path, "sem.tif", labels)}
    out = _mapper(MaskFormerSemanticDatasetMapper, ignore_label=65535, num_classes=847,
                  size_divisibility=32)(d)
    assert out["instances"].gt_classes.tolist() == [800]
    assert (out["sem_seg"][H:] == 65535).all() and (out["sem_seg"][:5, :W] == 800).all()


# ------------------------------------------------------------------ panoptic
def _panoptic(tmp_path, segments):
    pan = np.zeros((H, W), np.uint32)
    pan[:, :10] = 1
    pan[:, 10:20] = 2
    pan[:, 20:] = 3
    pan[0, :] = 0  # void row
    return {"file_name": _image(tmp_path),
            "pan_seg_file_name": _png(tmp_path, "pan.png", id2rgb(pan)),
            "segments_info": segments}, pan


def test_panoptic_skips_crowd_segments_and_derives_sem_seg(tmp_path):
    d, pan = _panoptic(tmp_path, [
        {"id": 1, "category_id": 0, "iscrowd": 0, "isthing": True},
        {"id": 2, "category_id": 1, "iscrowd": 1, "isthing": True},
        {"id": 3, "category_id": 2, "iscrowd": 0, "isthing": False},
    ])
    out = _mapper(MaskFormerPanopticDatasetMapper)(d)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 2]
    assert inst.gt_masks[0].equal(torch.from_numpy(pan == 1))
    assert inst.gt_masks[1].equal(torch.from_numpy(pan == 3))
    # no sem_seg file: the panoptic map's classes, crowd included, void = ignore
    expected = np.select([pan == 1, pan == 2, pan == 3], [0, 1, 2], 255)
    assert out["sem_seg"].equal(torch.from_numpy(expected.astype(np.int64)))
    assert "pan_seg_file_name" not in out and len(out["segments_info"]) == 3


def test_panoptic_uses_sem_seg_file_when_given(tmp_path):
    d, _ = _panoptic(tmp_path, [{"id": 1, "category_id": 0, "iscrowd": 0}])
    sem = np.full((H, W), 1, np.uint8)
    d["sem_seg_file_name"] = _png(tmp_path, "sem.png", sem)
    out = _mapper(MaskFormerPanopticDatasetMapper)(d)
    assert (out["sem_seg"] == 1).all()
    assert out["instances"].gt_classes.tolist() == [0]


def test_panoptic_without_segments_gives_zero_instances(tmp_path):
    d, _ = _panoptic(tmp_path, [])
    out = _mapper(MaskFormerPanopticDatasetMapper, size_divisibility=32)(d)
    assert out["instances"].gt_classes.shape == (0,)
    assert out["instances"].gt_masks.shape == (0, 32, 32)
    assert (out["sem_seg"] == 255).all()


def test_panoptic_out_of_range_category_names_file(tmp_path):
    d, _ = _panoptic(tmp_path, [{"id": 1, "category_id": 5, "iscrowd": 0}])
    with pytest.raises(ValueError, match=r"pan\.png: segment category_id 5 is outside \[0, 3\)"):
        _mapper(MaskFormerPanopticDatasetMapper)(d)


def test_panoptic_masks_follow_the_flip(tmp_path):
    d, pan = _panoptic(tmp_path, [{"id": 1, "category_id": 0, "iscrowd": 0},
                                  {"id": 3, "category_id": 2, "iscrowd": 0}])
    out = _mapper(MaskFormerPanopticDatasetMapper, [T.RandomFlip(prob=1.0)])(d)
    assert out["instances"].gt_masks[0].equal(torch.from_numpy((pan == 1)[:, ::-1].copy()))
    image = np.asarray(Image.open(d["file_name"]))[:, ::-1].transpose(2, 0, 1)
    assert out["image"].equal(torch.from_numpy(image.copy()))


# ------------------------------------------------------------------ instance
SQUARE = [[4.0, 3.0, 14.0, 3.0, 14.0, 12.0, 4.0, 12.0]]
TRIANGLE = [[18.0, 2.0, 28.0, 2.0, 23.0, 17.0]]


def _instance_dict(tmp_path, as_rle):
    annos = []
    for cat, poly in [(1, SQUARE), (2, TRIANGLE)]:
        segm = poly
        if as_rle:
            mask = polygons_to_bitmask(poly, H, W).astype(np.uint8)
            segm = mask_util.encode(np.asfortranarray(mask))
        annos.append({"category_id": cat, "segmentation": segm, "iscrowd": 0,
                      "bbox": [0, 0, 1, 1], "bbox_mode": BoxMode.XYWH_ABS})
    annos.append({"category_id": 0, "segmentation": SQUARE, "iscrowd": 1,
                  "bbox": [0, 0, 1, 1], "bbox_mode": BoxMode.XYWH_ABS})
    return {"file_name": _image(tmp_path), "height": H, "width": W, "annotations": annos}


def test_instance_polygons_and_rle_give_the_same_masks(tmp_path):
    mapper = _mapper(MaskFormerInstanceDatasetMapper, size_divisibility=32)
    from_poly = mapper(_instance_dict(tmp_path, as_rle=False))["instances"]
    from_rle = mapper(_instance_dict(tmp_path, as_rle=True))["instances"]
    assert from_poly.gt_classes.tolist() == [1, 2] == from_rle.gt_classes.tolist()  # crowd skipped
    assert from_poly.gt_masks.shape == (2, 32, 32) and from_poly.gt_masks.dtype == torch.bool
    assert from_poly.gt_masks.equal(from_rle.gt_masks)
    # pycocotools rasterizes the square [4, 14] x [3, 12] to pixels 4..13 x 3..11
    assert from_poly.gt_masks[0, 3:12, 4:14].all() and from_poly.gt_masks[0].sum() == 10 * 9
    assert "sem_seg" not in mapper(_instance_dict(tmp_path, as_rle=False))


def test_instance_empty_annotation_list_gives_zero_instances(tmp_path):
    d = {"file_name": _image(tmp_path), "annotations": []}
    inst = _mapper(MaskFormerInstanceDatasetMapper)(d)["instances"]
    assert inst.gt_classes.shape == (0,) and inst.gt_masks.shape == (0, H, W)


def test_instance_out_of_range_category_names_file(tmp_path):
    d = _instance_dict(tmp_path, as_rle=False)
    d["annotations"][0]["category_id"] = 9
    with pytest.raises(ValueError, match=r"img\.png: annotation category_id 9 is outside"):
        _mapper(MaskFormerInstanceDatasetMapper)(d)


# ------------------------------------------------------------------ bad files
def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    d = {"file_name": str(bad), "sem_seg_file_name": _png(tmp_path, "s.png", np.zeros((H, W), np.uint8))}
    with pytest.raises(ImageReadError, match=r"broken\.jpg: .*; re-create or remove it"):
        _mapper(MaskFormerSemanticDatasetMapper)(d)
    with pytest.raises(OSError, match="missing.png"):  # a missing file: same error family
        _mapper(MaskFormerSemanticDatasetMapper)(dict(d, file_name=str(tmp_path / "missing.png")))


def test_skip_bad_images_lets_detectron2_loader_take_another(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    sem = _png(tmp_path, "s.png", np.ones((H, W), np.uint8))
    good = {"file_name": _image(tmp_path), "sem_seg_file_name": sem, "image_id": "good"}
    mapper = _mapper(MaskFormerSemanticDatasetMapper, on_bad_image="skip")
    assert mapper({"file_name": str(bad), "sem_seg_file_name": sem}) is None
    assert mapper.num_skipped == 1
    dataset = MapDataset(DatasetFromList([{"file_name": str(bad), "sem_seg_file_name": sem},
                                          good], copy=False), mapper)
    assert dataset[0]["image_id"] == "good"  # d2 retries with another index
    with pytest.raises(ValueError, match="INPUT.ON_BAD_IMAGE"):
        _mapper(MaskFormerSemanticDatasetMapper, on_bad_image="ignore")


def test_test_mode_reads_no_labels_and_resizes(tmp_path):
    d = {"file_name": _image(tmp_path), "sem_seg_file_name": str(tmp_path / "nowhere.png")}
    mapper = MaskFormerSemanticDatasetMapper(_cfg(**{"INPUT.MIN_SIZE_TEST": 40}), is_train=False)
    out = mapper(d)
    assert out["image"].shape == (3, 40, 60)
    assert "instances" not in out and "sem_seg" not in out and "sem_seg_file_name" not in out


# ------------------------------------------------------------------ config, registry, LSJ
def test_registry_names_and_unknown_name():
    assert {"mask_former_semantic", "mask_former_panoptic", "mask_former_instance",
            "detr_panoptic", "coco_instance_lsj", "coco_panoptic_lsj"} <= {k for k, _ in DATASET_MAPPER_REGISTRY}
    cfg = _cfg(**{"INPUT.DATASET_MAPPER_NAME": "mask_former_panoptic"})
    assert type(build_mapper(cfg)) is MaskFormerPanopticDatasetMapper
    cfg.INPUT.DATASET_MAPPER_NAME = "nope"
    with pytest.raises(KeyError, match=r"INPUT.DATASET_MAPPER_NAME='nope' is not registered in "
                                       r"DATASET_MAPPER_REGISTRY; registered: \["):
        build_mapper(cfg)


def test_register_custom_mapper_and_select_it_from_yaml(tmp_path):
    @DATASET_MAPPER_REGISTRY.register()
    class CustomMapperFromYaml(MaskFormerSemanticDatasetMapper):
        pass

    @register_mapper("test_custom_mapper")
    class Named(MaskFormerSemanticDatasetMapper):
        pass

    yaml = tmp_path / "custom.yaml"
    yaml.write_text("INPUT:\n  DATASET_MAPPER_NAME: CustomMapperFromYaml\n")
    try:
        cfg = _cfg()
        cfg.merge_from_file(str(yaml))
        mapper = build_mapper(cfg, is_train=True)
        assert type(mapper) is CustomMapperFromYaml and mapper.is_train
        cfg.INPUT.DATASET_MAPPER_NAME = "test_custom_mapper"
        assert type(build_mapper(cfg)) is Named
    finally:
        DATASET_MAPPER_REGISTRY._obj_map.pop("CustomMapperFromYaml")
        DATASET_MAPPER_REGISTRY._obj_map.pop("test_custom_mapper")


def test_config_augmentations_follow_the_official_recipe():
    cfg = _cfg(**{"INPUT.CROP.ENABLED": True, "INPUT.CROP.SIZE": (64, 64),
                  "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 0.75, "INPUT.COLOR_AUG_SSD": True,
                  "INPUT.MIN_SIZE_TRAIN": (64, 96), "INPUT.MAX_SIZE_TRAIN": 512})
    augs = build_augmentations(cfg, True, "maskformer")
    assert [type(a) for a in augs] == [T.ResizeShortestEdge, T.RandomCrop_CategoryAreaConstraint,
                                       ColorAugSSDTransform, T.RandomFlip]
    assert augs[0].short_edge_length == (64, 96) and augs[1].single_category_max_area == 0.75
    assert type(build_augmentations(cfg, True, "instance")[1]) is T.RandomCrop
    assert [type(a) for a in build_augmentations(cfg, False)] == [T.ResizeShortestEdge]
    with pytest.raises(ValueError, match="augmentation style 'bogus'"):
        build_augmentations(cfg, True, "bogus")


def test_semantic_mapper_from_config_crops_and_pads(tmp_path):
    labels = np.zeros((60, 80), np.uint8)
    labels[:, 40:] = 1
    d = {"file_name": _image(tmp_path, h=60, w=80), "sem_seg_file_name": _png(tmp_path, "s.png", labels)}
    cfg = _cfg(**{"INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute",
                  "INPUT.CROP.SIZE": (32, 32), "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 0.9,
                  "INPUT.MIN_SIZE_TRAIN": (60,),
                  "INPUT.MAX_SIZE_TRAIN": 1000, "INPUT.SIZE_DIVISIBILITY": 32,
                  "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 2})
    np.random.seed(0)
    out = build_mapper(cfg)(d)
    assert out["image"].shape == (3, 32, 32)
    # the category-area constraint picks a crop with both classes
    assert out["instances"].gt_classes.tolist() == [0, 1]
    masks = out["instances"].gt_masks
    assert masks.sum(0).eq(1).all()  # the two class masks tile the crop


def test_lsj_panoptic_pads_to_image_size(tmp_path):
    d, _ = _panoptic(tmp_path, [{"id": 1, "category_id": 0, "iscrowd": 0},
                                {"id": 3, "category_id": 2, "iscrowd": 0}])
    cfg = _cfg(**{"INPUT.IMAGE_SIZE": 48, "INPUT.MIN_SCALE": 1.0, "INPUT.MAX_SCALE": 1.0,
                  "INPUT.RANDOM_FLIP": "none", "INPUT.DATASET_MAPPER_NAME": "coco_panoptic_lsj"})
    mapper = build_mapper(cfg)
    assert type(mapper) is COCOPanopticLSJDatasetMapper
    out = mapper(d)
    # 20x30 scaled to fit 48x48 -> 32x48, padded to 48x48
    assert out["image"].shape == (3, 48, 48) and (out["image"][:, 32:] == 128).all()
    assert out["sem_seg"].shape == (48, 48) and (out["sem_seg"][32:] == 255).all()
    masks = out["instances"].gt_masks
    assert masks.shape == (2, 48, 48) and not masks[:, 32:].any()
    # segment 1 is the left third below the void top row, scaled by 1.6 (nearest)
    assert masks[0, 2:32, :16].all() and not masks[0, :, 17:].any() and not masks[0, 0].any()


def test_detr_panoptic_mapper_builds_from_official_coco_config(tmp_path):
    d, _ = _panoptic(tmp_path, [{"id": i, "category_id": i - 1, "iscrowd": 0} for i in (1, 2, 3)])
    cfg = _cfg(**{"INPUT.DATASET_MAPPER_NAME": "detr_panoptic", "INPUT.CROP.ENABLED": True,
                  "INPUT.CROP.TYPE": "absolute_range", "INPUT.CROP.SIZE": (10, 20),
                  "INPUT.MIN_SIZE_TRAIN": (40,), "INPUT.MAX_SIZE_TRAIN": 1333})
    mapper = build_mapper(cfg)
    for seed in range(4):  # both branches of the random choice
        np.random.seed(seed)
        out = mapper(d)
        assert min(out["image"].shape[1:]) == 40
        masks = out["instances"].gt_masks
        assert masks.shape[1:] == out["image"].shape[1:]
        assert 1 <= len(out["instances"]) <= 3 and set(out["instances"].gt_classes.tolist()) <= {0, 1, 2}
        assert masks.sum(0).le(1).all() and masks.any(0).float().mean() > 0.8  # disjoint, ~no void
