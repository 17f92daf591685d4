"""Hugging Face importers on hostile folders: one readable line, nothing run, nothing written.

A tiny random MaskFormer / Mask2Former is saved once; each case copies its folder, breaks one
thing (a JSON field, the weights file, custom code) and imports it. The importer must raise one
``HFImportError`` line ``<file>: <field>: <what is wrong>`` (or the checkpoint reader's refusal),
write nothing to the output folder and run nothing from the folder. Two cases go end to end
through the command-line tools (empty stdin: a question on stdin would hang or fail there).
"""
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

import cv2
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from _hostile import assert_refused, files_under, run_hostile  # noqa: E402
from transformers import (  # noqa: E402
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    MaskFormerConfig,
    MaskFormerForInstanceSegmentation,
    SwinConfig,
)
from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig  # noqa: E402

from maskformer_d2.checkpoint import model_json  # noqa: E402
from maskformer_d2.checkpoint.safe_load import UNSAFE_PICKLE_ENV  # noqa: E402
from maskformer_d2.convert.hf import import_hf_maskformer  # noqa: E402
from maskformer_d2.convert.hf_mask2former import import_hf_mask2former  # noqa: E402
from maskformer_d2.errors import HFImportError, UnsafeCheckpointError  # noqa: E402

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _swin() -> SwinConfig:
    return SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2, image_size=32,
                      drop_path_rate=0.0, out_features=STAGES)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Dict[str, Path]:
    """save_pretrained folders of a tiny MaskFormer and Mask2Former, with a preprocessor config."""
    from transformers import MaskFormerImageProcessor

    root = tmp_path_factory.mktemp("genuine")
    torch.manual_seed(0)
    decoder = MaskFormerDetrConfig(d_model=32, decoder_layers=1, decoder_ffn_dim=16, decoder_attention_heads=2,
                                   num_queries=3, encoder_layers=0, dropout=0.0)
    maskformer = MaskFormerForInstanceSegmentation(MaskFormerConfig(  # GroupNorm: 32 channels at least
        backbone_config=_swin(), decoder_config=decoder, fpn_feature_size=32, mask_feature_size=32, num_labels=3))
    maskformer.save_pretrained(root / "maskformer")
    MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(root / "maskformer")
    mask2former = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=_swin(), feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_layers=1,
        decoder_layers=2, dim_feedforward=16, num_attention_heads=2, num_queries=3, num_labels=3))
    mask2former.save_pretrained(root / "mask2former")
    return {"maskformer": root / "maskformer", "mask2former": root / "mask2former"}


def _copy(genuine: Dict[str, Path], kind: str, tmp_path: Path) -> Path:
    folder = tmp_path / kind
    shutil.copytree(genuine[kind], folder)
    return folder


def _edit_json(folder: Path, name: str, edit: Callable[[Dict[str, Any]], None]) -> None:
    data = json.loads((folder / name).read_text())
    edit(data)
    (folder / name).write_text(json.dumps(data))


def _set(path: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    """An edit that sets the dotted ``path`` of a JSON object to ``value``."""
    def edit(data: Dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data[part]
        data[last] = value
    return edit


def _refused(import_fn, folder: Path, out: Path, exception=HFImportError) -> str:
    """The one-line message of a refused import; nothing may have been written."""
    with pytest.raises(exception) as err:
        import_fn(str(folder), str(out))
    message = str(err.value)
    assert "\n" not in message
    assert not out.exists()
    return message


# ----------------------------------------------------------------------------- JSON fields
PREPROCESSOR = "preprocessor_config.json"
BAD_FIELDS = {
    # preprocessor_config.json
    "rescale_factor 0": (PREPROCESSOR, _set("rescale_factor", 0),
                         "preprocessor_config.json: rescale_factor: must be a number > 0 and <= 1e+06, not 0"),
    "string image_mean": (PREPROCESSOR, _set("image_mean", "abc"),
                          "preprocessor_config.json: image_mean: must be a list of 3 numbers >= -1e+06 and <= "
                          "1e+06, not 'abc'"),
    "image_std 0": (PREPROCESSOR, _set("image_std", [0.5, 0, 0.5]),
                    "preprocessor_config.json: image_std: must be a list of 3 numbers > 0 and <= 1e+06, "
                    "not [0.5, 0, 0.5]"),
    "non-numeric size": (PREPROCESSOR, _set("size.shortest_edge", "big"),
                         "preprocessor_config.json: size: shortest_edge must be an integer from 1 to 16384, "
                         "not 'big'"),
    "processor auto_map": (PREPROCESSOR, _set("auto_map", {"AutoImageProcessor": "evil.Processor"}),
                           "preprocessor_config.json: auto_map: refused, it asks to run Python code shipped with "
                           "the model, which maskformer_d2 never does"),
    # config.json
    "num_labels string": ("config.json", _set("num_labels", "abc"),
                          "config.json: num_labels: must be an integer from 1 to 100000, not 'abc'"),
    "num_labels negative": ("config.json", _set("num_labels", -3),
                            "config.json: num_labels: must be an integer from 1 to 100000, not -3"),
    "num_labels against id2label": ("config.json", _set("num_labels", 7),
                                    "config.json: num_labels: 7, but id2label names 3 classes"),
    "id2label key": ("config.json", _set("id2label", {"x": "cat"}),
                     "config.json: id2label: 'x' must be a class number from 0 to 99999"),
    "num_queries 5e7": ("config.json", _set("decoder_config.num_queries", 5e7),
                        "config.json: decoder_config.num_queries: must be an integer from 1 to 2000, "
                        "not 50000000.0"),
    "depths string": ("config.json", _set("backbone_config.depths", "abcd"),
                      "config.json: backbone_config.depths: must be a list of 1 to 8 integers from 1 to 64, "
                      "not 'abcd'"),
    "backbone_config 5": ("config.json", _set("backbone_config", 5),
                          "config.json: backbone_config: must be an object (the backbone's config), not 5"),
    "decoder_config 5": ("config.json", _set("decoder_config", 5),
                         "config.json: decoder_config: must be an object, not 5"),
    "backbone type": ("config.json", _set("backbone_config.model_type", "convnext"),
                      "config.json: backbone_config.model_type: must be one of 'swin', 'maskformer-swin', "
                      "'resnet', not 'convnext'"),
    "dropout as text": ("config.json", _set("decoder_config.dropout", "0.1"),
                        "config.json: decoder_config.dropout: must be a number >= 0 and <= 1, not '0.1'"),
    "a backbone to download": ("config.json", _set("backbone", "someone/some-model"),
                               "config.json: backbone: refused, it names a backbone for transformers to "
                               "download instead of backbone_config"),
    "another weights file": ("config.json", _set("transformers_weights", "../elsewhere.safetensors"),
                             "config.json: transformers_weights: refused, it points transformers at another "
                             "weights file"),
    "backbone auto_map": ("config.json", _set("backbone_config.auto_map", {"AutoBackbone": "evil.Backbone"}),
                          "config.json: backbone_config.auto_map: refused, it asks to run Python code shipped "
                          "with the model, which maskformer_d2 never does"),
    "unsupported setting": ("config.json", _set("backbone_config.hidden_act", "relu"),
                            "config.json: Swin hidden_act 'relu': only 'gelu'"),
    "heads that do not divide": ("config.json", _set("decoder_config.decoder_attention_heads", 3),
                                 "config.json: 3 decoder attention heads do not divide its width 32"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_a_bad_field_is_named_in_one_line(genuine, tmp_path, case):
    file, edit, expected = BAD_FIELDS[case]
    folder = _copy(genuine, "maskformer", tmp_path)
    _edit_json(folder, file, edit)
    assert _refused(import_hf_maskformer, folder, tmp_path / "out") == expected


@pytest.mark.parametrize("content, expected", [
    ("{\"do_rescale\": tru}", "preprocessor_config.json: not valid JSON (line 1, column 16: Expecting value)"),
    ("[1, 2, 3]", "preprocessor_config.json: must be a JSON object, not a list"),
    ("[" * 100_000 + "]" * 100_000, "preprocessor_config.json: not valid JSON (RecursionError: "),
    ("{\"rescale_factor\": " + "9" * 5000 + "}", "preprocessor_config.json: not valid JSON (ValueError: Exceeds"),
    (b"{\"image_mean\": \"\xff\"}", "preprocessor_config.json: not UTF-8 text"),
])
def test_a_file_that_is_not_a_json_object_is_named(genuine, tmp_path, content, expected):
    folder = _copy(genuine, "maskformer", tmp_path)
    path = folder / PREPROCESSOR
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert _refused(import_hf_maskformer, folder, tmp_path / "out").startswith(expected)


def test_json_files_are_read_only_if_small_and_regular(genuine, tmp_path, monkeypatch):
    folder = _copy(genuine, "maskformer", tmp_path)
    monkeypatch.setattr(model_json, "MAX_JSON_BYTES", 1000)
    size = (folder / "config.json").stat().st_size
    assert _refused(import_hf_maskformer, folder, tmp_path / "out") == \
        f"config.json: {size} bytes; a model's JSON file has at most 1000"
    monkeypatch.undo()
    (folder / PREPROCESSOR).unlink()
    os.mkfifo(folder / PREPROCESSOR)  # reading it would block for ever
    assert _refused(import_hf_maskformer, folder, tmp_path / "out") == \
        "preprocessor_config.json: not a regular file"


def test_sizes_are_checked_against_the_weights_before_building(genuine, tmp_path):
    """Every field within bounds, but together 100 decoder layers of 65536 features: the model would
    have 210 M parameters, which the tiny weights file cannot hold; refused before allocating."""
    folder = _copy(genuine, "maskformer", tmp_path)
    _edit_json(folder, "config.json", _set("decoder_config.decoder_layers", 100))
    _edit_json(folder, "config.json", _set("decoder_config.decoder_ffn_dim", 65536))
    size = (folder / "model.safetensors").stat().st_size
    message = _refused(import_hf_maskformer, folder, tmp_path / "out")
    assert message.startswith(f"model.safetensors: {size} bytes cannot hold the weights of the model config.json "
                              "describes (at least ")
    assert int(message.split("at least ")[1].split()[0]) > 2 * 200_000_000


def test_weights_of_other_shapes_are_named(genuine, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(genuine, "maskformer", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["class_predictor.weight"] = torch.zeros(2, 32)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert _refused(import_hf_maskformer, folder, tmp_path / "out") == \
        "model.safetensors: 1 tensors do not have the shapes config.json gives them (e.g. class_predictor.weight)"


def test_no_weights_file(genuine, tmp_path):
    folder = _copy(genuine, "maskformer", tmp_path)
    (folder / "model.safetensors").unlink()
    assert _refused(import_hf_maskformer, folder, tmp_path / "out") == \
        "no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)"


def test_mask2former_importer_names_an_unknown_model_type(genuine, tmp_path):
    folder = _copy(genuine, "mask2former", tmp_path)
    _edit_json(folder, "config.json", _set("model_type", "bert"))
    assert _refused(import_hf_mask2former, folder, tmp_path / "out") == \
        "config.json: model_type: 'bert': not a Mask2Former ('mask2former')"
    _edit_json(folder, "config.json", _set("model_type", "mask2former"))
    _edit_json(folder, "config.json", _set("num_queries", 10**9))
    assert _refused(import_hf_mask2former, folder, tmp_path / "out") == \
        "config.json: num_queries: must be an integer from 1 to 2000, not 1000000000"


# ----------------------------------------------------------------------------- weights and code
class _Marker:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch '{self.path}'",)


def _bin_instead_of_safetensors(folder: Path, extra: Dict[str, Any]) -> None:
    from safetensors.torch import load_file

    state = dict(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save({**state, **extra}, folder / "pytorch_model.bin")


def test_pytorch_model_bin_loads_with_weights_only(genuine, tmp_path, monkeypatch):
    """A plain pytorch_model.bin imports like model.safetensors; one with a pickle payload is refused
    in one line and the payload never runs."""
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)
    plain = _copy(genuine, "maskformer", tmp_path / "plain")
    _bin_instead_of_safetensors(plain, {})
    weights, _ = import_hf_maskformer(str(plain), str(tmp_path / "plain_out"))
    safetensors_weights, _ = import_hf_maskformer(str(genuine["maskformer"]), str(tmp_path / "reference"))
    from safetensors.torch import load_file

    got, expected = load_file(weights), load_file(safetensors_weights)
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in got)

    evil = _copy(genuine, "maskformer", tmp_path / "evil")
    marker = tmp_path / "MARKER"
    _bin_instead_of_safetensors(evil, {"payload": _Marker(marker)})
    message = _refused(import_hf_maskformer, evil, tmp_path / "out", UnsafeCheckpointError)
    assert message.startswith("checkpoint pytorch_model.bin: refused to unpickle posix.system")
    assert "--allow-unsafe-pickle" in message
    assert not marker.exists()


def _custom_code_folder(genuine, tmp_path: Path, marker: Path) -> Path:
    """A Mask2Former folder whose config asks transformers to run its own (marker-touching) code."""
    folder = _copy(genuine, "mask2former", tmp_path)
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    (folder / "configuration_evil.py").write_text(code)
    (folder / "modeling_evil.py").write_text(code)
    _edit_json(folder, "config.json", _set("auto_map", {"AutoConfig": "configuration_evil.EvilConfig",
                                                        "AutoModel": "modeling_evil.EvilModel"}))
    return folder


def test_custom_code_is_refused_and_never_runs(genuine, tmp_path):
    marker = tmp_path / "MARKER"
    folder = _custom_code_folder(genuine, tmp_path, marker)
    assert _refused(import_hf_mask2former, folder, tmp_path / "out") == (
        "config.json: auto_map: refused, it asks to run Python code shipped with the model, which maskformer_d2 "
        "never does")
    assert not marker.exists()


# ----------------------------------------------------------------------------- command lines
@pytest.mark.slow
def test_tools_refuse_custom_code_and_pickles_in_one_line(genuine, tmp_path):
    """End to end, with empty stdin: exit 1, one line, no traceback, no prompt, nothing run or written."""
    marker = tmp_path / "MARKER"
    code_folder = _custom_code_folder(genuine, tmp_path / "code", marker)
    out = run_hostile(["tools/convert-hf-mask2former-to-d2.py", code_folder, tmp_path / "out1"])
    assert_refused(out, f"error: {code_folder}: config.json: auto_map: refused, it asks to run Python code")
    assert out.returncode == 1

    pickle_folder = _copy(genuine, "maskformer", tmp_path / "pickle")
    _bin_instead_of_safetensors(pickle_folder, {"payload": _Marker(marker)})
    out = run_hostile(["tools/convert-hf-maskformer-to-d2.py", pickle_folder, tmp_path / "out2"])
    assert_refused(out, f"error: {pickle_folder}: checkpoint pytorch_model.bin: refused to unpickle posix.system")
    assert out.returncode == 1

    assert not marker.exists()
    assert not {"out1", "out2"} & files_under(tmp_path)


# ----------------------------------------------------------------------------- a DINOv3 folder
def _dinov3_folder(tmp_path: Path, **fields: Any) -> Path:
    """A save_pretrained folder of a tiny DINOv3 ViT's config, ``fields`` then set in its JSON."""
    from transformers import DINOv3ViTConfig

    folder = tmp_path / "dinov3"
    DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_register_tokens=4).save_pretrained(folder)
    _edit_json(folder, "config.json", lambda data: data.update(fields))
    return folder


def test_a_dinov3_folder_builds_the_vit_its_config_json_describes(tmp_path):
    from maskformer_d2.modeling.backbone.dinov3_vit import DINOv3ViT, dinov3_config

    folder = _dinov3_folder(tmp_path, id2label={"0": "x" * 300})  # fields the ViT does not use: not read
    vit = DINOv3ViT(dinov3_config(str(folder)))
    assert (vit.embed_dim, len(vit.blocks), vit.num_prefix_tokens) == (32, 2, 5)
    assert vit.blocks[0].mlp.up_proj.weight.shape == (64, 32)
    # MODEL.EOMT.EMBED_DIM / DEPTH / NUM_HEADS still override it, the MLP keeping its ratio
    wider = DINOv3ViT(dinov3_config(str(folder), embed_dim=48, depth=3, num_heads=3))
    assert (wider.embed_dim, len(wider.blocks), wider.blocks[0].mlp.up_proj.weight.shape) == (48, 3, (96, 48))


DINOV3_FOLDERS = {
    "hidden_size 1e9": (dict(hidden_size=10**9), "config.json: hidden_size: must be an integer from 1 to 8192, "
                                                 "not 1000000000"),
    "layers as text": (dict(num_hidden_layers="12"), "config.json: num_hidden_layers: must be an integer from 1 "
                                                     "to 100, not '12'"),
    "layer_norm_eps 0": (dict(layer_norm_eps=0), "config.json: layer_norm_eps: must be a number > 0 and <= 1, not 0"),
    "rescale text": (dict(pos_embed_rescale="2"), "config.json: pos_embed_rescale: must be a number >= 0 and "
                                                  "<= 1000, not '2' (or null)"),
    "another model": (dict(model_type="vit"), "config.json: model_type: 'vit', not a DINOv3 ViT ('dinov3_vit')"),
    "custom code": (dict(auto_map={"AutoModel": "evil.Model"}), "config.json: auto_map: refused, it asks to run "
                                                                "Python code"),
    "heads": (dict(hidden_size=30, num_attention_heads=4), "hidden size 30 is not a multiple of the 4 attention "
                                                          "heads"),
    # every field within its bounds, together 134 B parameters: counted on the meta device, refused
    "too large together": (dict(hidden_size=8192, intermediate_size=65536, num_hidden_layers=100,
                                num_attention_heads=64), "the ViT would have 134.2 B parameters, more than the 8 B"),
}


@pytest.mark.parametrize("fields, expected", DINOV3_FOLDERS.values(), ids=DINOV3_FOLDERS.keys())
def test_a_dinov3_folder_config_json_is_checked_before_building(tmp_path, fields, expected):
    from maskformer_d2.modeling.backbone.dinov3_vit import dinov3_config

    folder = _dinov3_folder(tmp_path, **fields)
    with pytest.raises(HFImportError) as err:
        dinov3_config(str(folder))
    assert str(err.value).startswith(f"MODEL.EOMT.BACKBONE_NAME={str(folder)!r}: ")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_dinov3_folder_json_is_read_only_if_small_and_an_object(tmp_path, monkeypatch):
    from maskformer_d2.modeling.backbone.dinov3_vit import dinov3_config

    folder = _dinov3_folder(tmp_path)
    monkeypatch.setattr(model_json, "MAX_JSON_BYTES", 100)
    with pytest.raises(HFImportError, match=r": config.json: \d+ bytes; a model's JSON file has at most 100$"):
        dinov3_config(str(folder))
    monkeypatch.undo()
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(HFImportError, match="config.json: must be a JSON object, not a list$"):
        dinov3_config(str(folder))


@pytest.mark.slow
def test_the_demo_refuses_an_oversized_dinov3_folder_in_one_line(tmp_path):
    folder = _dinov3_folder(tmp_path, hidden_size=10**9)
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    out = run_hostile(["demo/demo.py", "--config-file", "configs/eomt/dinov3/coco/panoptic/eomt_large_640.yaml",
                       "--input", image, "--output", tmp_path / "vis",
                       "--opts", "MODEL.DEVICE", "cpu", "MODEL.EOMT.BACKBONE_NAME", folder])
    assert_refused(out, "MODEL.EOMT.BACKBONE_NAME=", "config.json: hidden_size: must be an integer from 1 to 8192")
    assert files_under(tmp_path / "vis") == set()  # nothing drawn
