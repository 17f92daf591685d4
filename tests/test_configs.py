"""Specification of the configs tree: official YAMLs load unchanged and build the official models.

* ``configs/`` holds a counterpart of every config of the official MaskFormer ``configs/`` tree,
  at the same relative path;
* every YAML under ``configs/`` merges into ``get_cfg()`` + ``add_maskformer_config`` with no
  unknown key;
* for each reference manifest, the model built from the config it names has exactly the official
  state-dict entries (name, shape, dtype), so official checkpoints load strictly.
"""

from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import maskformer_d2  # noqa: F401  (registers meta-arch, heads, backbone)
from maskformer_d2.config import add_maskformer_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# every file of facebookresearch/MaskFormer's configs/ (MODEL_ZOO.md's models plus their bases)
OFFICIAL_CONFIGS = [
    "ade20k-150/Base-ADE20K-150.yaml",
    "ade20k-150/maskformer_R50_bs16_160k.yaml",
    "ade20k-150/maskformer_R101_bs16_160k.yaml",
    "ade20k-150/maskformer_R101c_bs16_160k.yaml",
    "ade20k-150/per_pixel_baseline_R50_bs16_160k.yaml",
    "ade20k-150/per_pixel_baseline_plus_R50_bs16_160k.yaml",
    "ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml",
    "ade20k-150/swin/maskformer_swin_small_bs16_160k.yaml",
    "ade20k-150/swin/maskformer_swin_base_IN21k_384_bs16_160k_res640.yaml",
    "ade20k-150/swin/maskformer_swin_large_IN21k_384_bs16_160k_res640.yaml",
    "ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k.yaml",
    "ade20k-150-panoptic/maskformer_panoptic_R101_bs16_720k.yaml",
    "ade20k-full-847/Base-ADE20KFull-847.yaml",
    "ade20k-full-847/maskformer_R50_bs16_200k.yaml",
    "ade20k-full-847/maskformer_R101_bs16_200k.yaml",
    "ade20k-full-847/maskformer_R101c_bs16_200k.yaml",
    "ade20k-full-847/per_pixel_baseline_R50_bs16_200k.yaml",
    "ade20k-full-847/per_pixel_baseline_plus_R50_bs16_200k.yaml",
    "cityscapes-19/Base-Cityscapes-19.yaml",
    "cityscapes-19/maskformer_R101_bs16_90k.yaml",
    "cityscapes-19/maskformer_R101c_bs16_90k.yaml",
    "coco-panoptic/Base-COCO-PanopticSegmentation.yaml",
    "coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml",
    "coco-panoptic/maskformer_panoptic_R101_bs64_554k.yaml",
    "coco-panoptic/swin/maskformer_panoptic_swin_tiny_bs64_554k.yaml",
    "coco-panoptic/swin/maskformer_panoptic_swin_small_bs64_554k.yaml",
    "coco-panoptic/swin/maskformer_panoptic_swin_base_IN21k_384_bs64_554k.yaml",
    "coco-panoptic/swin/maskformer_panoptic_swin_large_IN21k_384_bs64_554k.yaml",
    "coco-stuff-10k-171/Base-COCOStuff10K-171.yaml",
    "coco-stuff-10k-171/maskformer_R50_bs32_60k.yaml",
    "coco-stuff-10k-171/maskformer_R101_bs32_60k.yaml",
    "coco-stuff-10k-171/maskformer_R101c_bs32_60k.yaml",
    "coco-stuff-10k-171/per_pixel_baseline_R50_bs32_60k.yaml",
    "coco-stuff-10k-171/per_pixel_baseline_plus_R50_bs32_60k.yaml",
    "mapillary-vistas-65/Base-MapillaryVistas-65.yaml",
    "mapillary-vistas-65/maskformer_R50_bs16_300k.yaml",
]

MANIFESTS = [
    "manifests/ade20k-150_maskformer_R50.keys.txt",
    "manifests/ade20k-150_maskformer_R101c.keys.txt",
    "manifests/ade20k-150_maskformer_swin_tiny.keys.txt",
    "manifests/ade20k-150_maskformer_swin_large_IN21k_384.keys.txt",
    "manifests/ade20k-150_per_pixel_baseline_plus_R50.keys.txt",
    "manifests/cityscapes-19_maskformer_R101c.keys.txt",
    "manifests/coco-panoptic_maskformer_panoptic_R50.keys.txt",
    # official Mask2Former models
    "mask2former/manifests/m2f_ade20k_semantic_R50.keys.txt",
    "mask2former/manifests/m2f_ade20k_semantic_swin_large_IN21k_384.keys.txt",
    "mask2former/manifests/m2f_cityscapes_semantic_R50.keys.txt",
    "mask2former/manifests/m2f_coco_instance_R50.keys.txt",
    "mask2former/manifests/m2f_coco_panoptic_R50.keys.txt",
]

Entry = Tuple[Tuple[int, ...], str]


def load_config(path: Path):
    """Official-style config: d2 defaults + MaskFormer keys, then the YAML; unknown keys raise."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.set_new_allowed(False)
    cfg.merge_from_file(str(path))
    return cfg


def read_manifest(path: Path) -> Tuple[str, Dict[str, Entry]]:
    """(config path it names, {name: (shape, dtype)}) of a ``name<TAB>shape<TAB>dtype`` manifest."""
    config, entries = None, {}
    for line in path.read_text().splitlines():
        if line.startswith(("# official config:", "# official Mask2Former config:")):
            config = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            name, shape, dtype = line.split("\t")
            entries[name] = (
                tuple(int(s) for s in shape.strip("()").split(",") if s.strip()),
                dtype,
            )
    assert config is not None, f"{path}: no '# official config:' line"
    return config, entries


def describe_difference(
    got: Dict[str, Entry], expected: Dict[str, Entry], limit: int = 40
) -> List[str]:
    """Lines naming each missing / unexpected / differently shaped entry (first ``limit`` each)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    different = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    lines = []
    for title, names, show in (
        ("missing (in the official checkpoint, not in our model)", missing, lambda k: expected[k]),
        ("unexpected (in our model, not in the official checkpoint)", unexpected, lambda k: got[k]),
        (
            "different shape/dtype (ours vs official)",
            different,
            lambda k: f"{got[k]} vs {expected[k]}",
        ),
    ):
        if names:
            lines.append(f"{len(names)} {title}:")
            lines += [f"    {k}  {show(k)}" for k in names[:limit]]
            if len(names) > limit:
                lines.append(f"    ... and {len(names) - limit} more")
    return lines


@pytest.mark.parametrize("relpath", OFFICIAL_CONFIGS)
def test_official_config_has_a_counterpart(relpath):
    assert (CONFIGS / relpath).is_file(), f"configs/{relpath} (an official config) is missing"


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_config_merges_without_unknown_keys(path):
    cfg = load_config(path)  # raises KeyError "Non-existent config key" on an unknown key
    assert cfg.MODEL.META_ARCHITECTURE  # a meaningful value survived the merge


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_config_loads_through_the_safe_reader_of_the_commands(path):
    """train_net.py and demo.py read YAML safely; the official list expressions
    (``!!python/object/apply:eval [...]``) still load, to the value yacs' eval gives."""
    from maskformer_d2.config import load_config as command_config
    assert command_config(str(path)) == load_config(path)


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('touch x')", "only int(), float(), round() and range()"),
    ("(1).__class__", "Attribute is not allowed"),
    ("[0] * 10", "arithmetic on lists"),
    ("range(10 ** 9)", "Pow is not allowed"),
    ("list(range(1000000000))", "only int(), float(), round() and range()"),
    ("[x for x in range(1000000000)]", "range of 1000000000 numbers"),
    ("'a'", "not a number"),
])
def test_config_expressions_that_are_not_plain_arithmetic_are_refused(tmp_path, expression, message):
    from maskformer_d2.config import load_config as command_config
    path = tmp_path / "bad.yaml"
    path.write_text(f"INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval [\"{expression}\"]\n")
    with pytest.raises(ValueError) as e:
        command_config(str(path))
    assert str(e.value).startswith(f"config {path}: refused") and message in str(e.value)
    assert not (tmp_path / "x").exists()


def test_config_expressions_evaluate_like_python():
    from maskformer_d2.config import evaluate_list_expression
    assert evaluate_list_expression("[int(x * 0.1 * 640) for x in range(5, 21)]") == [
        int(x * 0.1 * 640) for x in range(5, 21)]
    assert evaluate_list_expression("(1, 2.5, -3 // 2)") == (1, 2.5, -2)


def test_merged_values_follow_the_base_chain():
    cfg = load_config(
        CONFIGS / "coco-panoptic/swin/maskformer_panoptic_swin_large_IN21k_384_bs64_554k.yaml"
    )
    assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
    assert cfg.MODEL.SWIN.EMBED_DIM == 192 and cfg.MODEL.SWIN.WINDOW_SIZE == 12
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133  # from the R50 parent
    assert (
        cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "BasePixelDecoder"
    )  # overridden by the child
    assert cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY == 0
    assert cfg.INPUT.MAX_SIZE_TRAIN == 1000
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_panoptic",)  # from the Base file
    cfg = load_config(CONFIGS / "ade20k-150/maskformer_R50_bs16_160k.yaml")
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(
        int(x * 0.1 * 512) for x in range(5, 21)
    )  # !!python eval


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_built_model_state_dict_equals_official_manifest(reference_dir, manifest):
    config, expected = read_manifest(Path(reference_dir) / manifest)
    cfg = load_config(REPO / config)
    cfg.MODEL.DEVICE = "meta"  # build_model moves the model there; no memory, no init cost
    with torch.device("meta"):
        model = build_model(cfg)
    got = {
        k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in model.state_dict().items()
    }
    diff = describe_difference(got, expected)
    assert not diff, f"model from {config} vs official manifest {manifest}:\n" + "\n".join(diff)
