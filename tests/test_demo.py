"""demo/demo.py and maskformer_d2.engine.predictor: images in, renderings out, one clear line per bad input.

The command-line tests run demo/demo.py as a subprocess (no $DISPLAY) with a tiny random-weight
ResNet-18 MaskFormer saved to a temporary folder.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _tiny_maskformer import save_tiny_model, tiny_cfg

from maskformer_d2.data.io import ImageReadError, read_image
from maskformer_d2.data.metadata import display_metadata
from maskformer_d2.engine.predictor import MaskFormerPredictor
from maskformer_d2.visualization import VisualizationDemo, configure_task

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "demo.py"
BAND = 28  # height of the title band above each panel of --task all


def _load_demo_module():
    spec = importlib.util.spec_from_file_location("maskformer_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _photos():
    """RGB photographs shipped with scikit-image (astronaut, coffee), halved to keep the test fast.

    scikit-image comes with panopticapi-lite; without it, two drawn pictures of the same sizes stand in.
    """
    try:
        import skimage.data
    except ImportError:
        pictures = {}
        for name, (h, w) in {"astronaut": (256, 256), "coffee": (200, 300)}.items():
            img = np.dstack(np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h)) + [np.full((h, w), 90.0)])
            img = np.ascontiguousarray(img.astype(np.uint8))
            cv2.circle(img, (w // 3, h // 2), h // 4, (230, 40, 40), -1)
            cv2.rectangle(img, (w // 2, h // 4), (w - 10, h - 10), (30, 200, 60), -1)
            pictures[name] = img
        return pictures
    return {"astronaut": skimage.data.astronaut()[::2, ::2], "coffee": skimage.data.coffee()[::2, ::2]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder with config.yaml + model.pth of a tiny random-weight model, and good / bad inputs."""
    root = tmp_path_factory.mktemp("demo")
    save_tiny_model(root)
    for name, rgb in _photos().items():
        cv2.imwrite(str(root / f"{name}.png"), rgb[:, :, ::-1])
    (root / "notes.jpg").write_text("this is text, not a JPEG\n")
    (root / "truncated.png").write_bytes((root / "astronaut.png").read_bytes()[:3000])
    (root / "notes.mp4").write_text("this is text, not a video\n")
    return root


def run_demo(setup, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    cmd = [sys.executable, str(DEMO), "--config-file", str(setup / "config.yaml"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd or setup, timeout=600)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_clean_failure(result, expected_line, status=1):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert expected_line in error_lines(result), result.stderr


# ----------------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_missing_file(setup, tmp_path):
    result = run_demo(setup, "--input", "nope.jpg", "--output", tmp_path)
    assert_clean_failure(result, "error: nope.jpg: no such file")


@pytest.mark.slow
def test_glob_matching_nothing(setup, tmp_path):
    result = run_demo(setup, "--input", "photos/*.jpg", "--output", tmp_path)
    assert_clean_failure(result, "error: photos/*.jpg: the pattern matches no file")


@pytest.mark.slow
def test_text_file_named_jpg(setup, tmp_path):
    result = run_demo(setup, "--input", "notes.jpg", "--output", tmp_path)
    assert_clean_failure(result, "error: notes.jpg: not an image file (cannot identify its format)")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_truncated_image(setup, tmp_path):
    result = run_demo(setup, "--input", "truncated.png", "--output", tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(error_lines(result)) == 1
    assert error_lines(result)[0].startswith("error: truncated.png: corrupt or truncated image (")


@pytest.mark.slow
def test_checkpoint_for_other_num_classes(setup, tmp_path):
    result = run_demo(setup, "--input", "astronaut.png", "--output", tmp_path,
                      "--opts", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.startswith(f"error: checkpoint {setup / 'model.pth'}: 3 shape mismatches (sem_seg_head.predictor"
                           ".class_embed.weight: checkpoint (8, 64) vs model (10, 64)")
    assert line.endswith("is MODEL.SEM_SEG_HEAD.NUM_CLASSES right?")


@pytest.mark.slow
def test_missing_checkpoint(setup, tmp_path):
    result = run_demo(setup, "--input", "astronaut.png", "--output", tmp_path, "--opts", "MODEL.WEIGHTS", "gone.pth")
    assert_clean_failure(result, "error: checkpoint gone.pth: no such file; set MODEL.WEIGHTS to a "
                                 ".pth/.pkl/.safetensors file or an http(s) URL")


def test_video_that_cannot_be_opened(setup, tmp_path):
    result = run_demo(setup, "--video-input", "notes.mp4", "--output", tmp_path)
    assert_clean_failure(result, "error: notes.mp4: cannot be opened as a video (no frame could be decoded)")
    assert result.stderr.count("\n") <= 2  # FFmpeg's own complaints are silenced


def test_no_output_and_no_display(setup):
    result = run_demo(setup, "--input", "astronaut.png")
    assert_clean_failure(result, "error: no --output given and no display ($DISPLAY is unset); pass --output DIR "
                                 "to write the results", status=2)


@pytest.mark.slow
def test_unknown_config_key(setup, tmp_path):
    result = run_demo(setup, "--input", "astronaut.png", "--output", tmp_path, "--opts", "MODEL.NO_SUCH_KEY", "1")
    assert_clean_failure(result, "error: --opts: Non-existent key: MODEL.NO_SUCH_KEY")


@pytest.mark.slow
def test_bad_inputs_among_good_ones_are_reported_and_the_rest_processed(setup, tmp_path):
    result = run_demo(setup, "--input", "nope.jpg", "astronaut.png", "notes.jpg", "--output", tmp_path,
                      "--task", "semantic")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_lines(result) == [
        "error: nope.jpg: no such file",
        "error: notes.jpg: not an image file (cannot identify its format)",
        "error: 2 of 3 inputs failed",
    ]
    assert sorted(os.listdir(tmp_path)) == ["astronaut.png"]


# ----------------------------------------------------------------------------- good runs
@pytest.mark.slow
def test_task_all_writes_one_png_per_photo(setup, tmp_path):
    result = run_demo(setup, "--input", "*.png", "--output", tmp_path / "vis", "--task", "all")
    # truncated.png matches the glob too: reported, the photos still rendered
    assert result.returncode == 1, result.stderr
    assert [line for line in error_lines(result) if "truncated.png" not in line] == ["error: 1 of 3 inputs failed"]
    assert sorted(os.listdir(tmp_path / "vis")) == ["astronaut.png", "coffee.png"]
    for name, rgb in _photos().items():
        vis = cv2.imread(str(tmp_path / "vis" / f"{name}.png"))
        height, width = rgb.shape[:2]
        assert vis.shape == (height + BAND, 3 * width, 3)  # semantic | instance | panoptic
        photo = rgb[:, :, ::-1].astype(int)
        assert np.abs(vis[BAND:, :width].astype(int) - photo).mean() > 10  # semantic overlay covers it all
        line = next(line for line in result.stderr.splitlines() if line.startswith(f"{name}.png: "))
        assert " panoptic segment" in line and " in " in line and line.endswith(f"-> {tmp_path / 'vis' / name}.png")


def test_single_photo_to_a_named_file_with_config_default_task(setup, tmp_path):
    result = run_demo(setup, "--input", "coffee.png", "--output", tmp_path / "out.png")
    assert result.returncode == 0, result.stderr
    rgb = _photos()["coffee"]
    assert cv2.imread(str(tmp_path / "out.png")).shape == rgb.shape  # one semantic panel, no band


@pytest.mark.slow
def test_video_is_rendered_frame_by_frame(setup, tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for i in range(3):
        writer.write(np.full((64, 96, 3), 60 * i, np.uint8))
    writer.release()
    result = run_demo(setup, "--video-input", tmp_path / "clip.mp4", "--output", tmp_path / "vis", "--task", "panoptic")
    assert result.returncode == 0, result.stderr
    assert "clip.mp4: 3 frames in" in result.stderr
    video = cv2.VideoCapture(str(tmp_path / "vis" / "clip.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    ok, frame = video.read()
    assert ok and frame.shape == (64, 96, 3)


def test_help_documents_exit_status():
    result = subprocess.run([sys.executable, str(DEMO), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    assert "reported on its own line and the others are still processed" in result.stdout


# ----------------------------------------------------------------------------- reading images
def test_read_image_converts_every_kind_to_3_channel_uint8(tmp_path):
    gray = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    bgra = np.dstack([np.full((48, 64), c, np.uint8) for c in (10, 20, 30, 128)])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    gray16 = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray16)
    color16 = np.dstack([np.full((48, 64), v, np.uint16) for v in (257 * 10, 257 * 20, 65535)])
    cv2.imwrite(str(tmp_path / "color16.png"), color16)

    assert np.array_equal(read_image(str(tmp_path / "gray.png")), np.dstack([gray] * 3))
    rgba = read_image(str(tmp_path / "rgba.png"))
    assert rgba.shape == (48, 64, 3) and rgba[0, 0].tolist() == [10, 20, 30]  # BGR, alpha dropped
    assert read_image(str(tmp_path / "rgba.png"), format="RGB")[0, 0].tolist() == [30, 20, 10]
    g16 = read_image(str(tmp_path / "gray16.png"))
    assert g16.dtype == np.uint8 and np.array_equal(g16[..., 0], np.round(gray16 / 257).astype(np.uint8))
    assert read_image(str(tmp_path / "color16.png"))[0, 0].tolist() == [10, 20, 255]


def test_read_image_errors_are_one_line(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match=r"text\.jpg: not an image file"):
        read_image(str(tmp_path / "text.jpg"))
    with pytest.raises(ImageReadError, match=r"gone\.png: no such file$"):
        read_image(str(tmp_path / "gone.png"))


# ----------------------------------------------------------------------------- predictor
def test_predictor_resizes_and_converts_to_input_format():
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 32, 40
    predictor = MaskFormerPredictor(cfg)  # MODEL.WEIGHTS "": random weights, with a warning
    seen = []
    predictor.model.register_forward_pre_hook(lambda module, args: seen.append(args[0][0]))
    bgr = np.zeros((50, 100, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    out = predictor(bgr)
    image = seen[0]["image"]
    assert image.shape == (3, 20, 40)  # shorter side 32 would make the longer 64 > 40: capped
    assert image[2].mean() == 200 and image[0].mean() == 0  # INPUT.FORMAT of the config is RGB
    assert (seen[0]["height"], seen[0]["width"]) == (50, 100)
    assert out["sem_seg"].shape == (7, 50, 100)
    assert not predictor.model.training


def test_configure_task_switches_outputs():
    cfg = tiny_cfg()
    test = configure_task(cfg, "all").MODEL.MASK_FORMER.TEST
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON) == (True, True, True)
    test = configure_task(cfg, "instance").MODEL.MASK_FORMER.TEST
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON) == (False, True, False)
    semantic_only = tiny_cfg(overrides=["DATASETS.TRAIN", ("ade20k_sem_seg_train",)])
    with pytest.raises(ValueError, match=r"task 'panoptic' needs thing classes, but DATASETS.TRAIN\[0\] "
                                         r"'ade20k_sem_seg_train' defines no thing_dataset_id_to_contiguous_id"):
        configure_task(semantic_only, "panoptic")


def test_display_metadata_names_every_class():
    meta = display_metadata(tiny_cfg())
    assert meta.stuff_classes == meta.thing_classes == ["circle", "square", "triangle", "star", "sky", "grass", "wall"]
    assert len(meta.stuff_colors) == 7
    unnamed = display_metadata(tiny_cfg(num_classes=3, overrides=["DATASETS.TRAIN", (), "DATASETS.TEST", ()]))
    assert unnamed.thing_classes == ["class 0", "class 1", "class 2"] and len(unnamed.thing_colors) == 3


def test_visualization_demo_task_all_is_three_panels():
    demo = VisualizationDemo(tiny_cfg(), task="all", confidence_threshold=0.0)
    image = _photos()["coffee"][:, :, ::-1].copy()
    predictions, vis = demo.run_on_image(image)
    assert set(predictions) == {"sem_seg", "instances", "panoptic_seg"}
    assert vis.shape == (image.shape[0] + BAND, 3 * image.shape[1], 3) and vis.dtype == np.uint8
    instances = len(predictions["instances"])  # threshold 0: all of them are drawn and counted
    assert instances > 0 and f", {instances} instances, " in demo.summarize(predictions)


def test_output_paths_are_unique_per_input():
    demo = _load_demo_module()
    assert demo.output_paths(["a/x.jpg", "b/x.png", "y.jpeg"], "out") == ["out/x.png", "out/x_1.png", "out/y.png"]
    assert demo.output_paths(["a/x.jpg"], "result.png") == ["result.png"]


def test_video_outputs_keep_the_source_suffix_apart():
    demo = _load_demo_module()
    assert demo.video_output_path("in/clip.mp4", "vis") == "vis/clip.mp4"
    assert demo.video_output_path("in/clip.avi", "vis") == "vis/clip_avi.mp4"
    assert demo.video_output_path("in/clip.avi", "out.mp4") == "out.mp4"


@pytest.mark.slow
def test_one_output_image_for_two_inputs_is_a_usage_error(setup, tmp_path):
    result = run_demo(setup, "--input", "astronaut.png", "coffee.png", "--output", tmp_path / "x.png")
    assert_clean_failure(result, f"error: --output {tmp_path / 'x.png'} names one image file, but there are 2 "
                                 "inputs; pass a folder", status=2)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_output_problems_are_reported_before_the_model_is_built(setup, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    # the checkpoint does not exist either: the output problem must be found first
    result = run_demo(setup, "--input", "astronaut.png", "--output", blocker / "vis",
                      "--opts", "MODEL.WEIGHTS", "gone.pth")
    assert_clean_failure(result, f"error: --output: cannot create {blocker / 'vis'} (Not a directory)")
    result = run_demo(setup, "--video-input", "missing.mp4", "--output", tmp_path,
                      "--opts", "MODEL.WEIGHTS", "gone.pth")
    assert_clean_failure(result, "error: missing.mp4: no such file")


@pytest.mark.slow
def test_a_config_that_would_run_code_is_refused(setup, tmp_path):
    marker = tmp_path / "MARKER"
    config = tmp_path / "evil.yaml"
    config.write_text(f"_BASE_: {setup / 'config.yaml'}\n"
                      f"MODEL:\n  WEIGHTS: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    cmd = [sys.executable, str(DEMO), "--config-file", str(config), "--input", "astronaut.png",
           "--output", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=setup, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = error_lines(result)[-1]
    assert line.startswith(f"error: config {config}: refused: it is not plain YAML") and "python/object/apply" in line
    assert not marker.exists()
