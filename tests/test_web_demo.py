"""The demo page (demo/app.py): the legend's numbers, the page's work without a browser, and the
page itself driven by headless Chromium (Debian's ``chromium``, installed by the set-up) through
Playwright: a real photo in, an overlay, a legend and downloads out; a bad upload gets a message
and the server keeps serving."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _tiny_maskformer import save_tiny_model, tiny_cfg
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances

from maskformer_d2.visualization import describe_segments, segments_record

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "demo" / "app.py"
SCREENSHOT = REPO / "scripts" / "screenshot_demo_page.py"
BAND = 28  # the title band of each panel when several tasks are drawn side by side
META = Metadata(stuff_classes=["sky", "grass", "circle"], stuff_colors=[[0, 0, 255], [0, 255, 0], [255, 0, 0]])


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_app():
    return _load(APP, "maskformer_app")


def _photo() -> np.ndarray:
    """A real photograph (scikit-image's astronaut, which panopticapi-lite brings), RGB 256x256."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[::2, ::2])


# ---------------------------------------------------------------------------------- the legend
def _predictions():
    sem = torch.full((3, 4, 4), 0.1)
    sem[0, :2] = 0.8  # rows 0-1: sky (8 pixels, share 0.8 / 1.0)
    sem[1, 2:] = 1.8  # rows 2-3: grass (share 1.8 / 2.0) ...
    sem[2, 3, :2] = 2.0  # ... except 2 pixels of circle (share 2.0 / 3.9; the scores pass 1)
    inst = Instances((4, 4))
    inst.pred_masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    inst.pred_masks[0, 3, :2] = True
    inst.pred_masks[1, :1] = True
    inst.pred_classes = torch.tensor([2, 0])
    inst.scores = torch.tensor([0.95, 0.3])
    pan = torch.zeros(4, 4, dtype=torch.int32)
    pan[:2], pan[3, :2] = 1, 2
    info = [{"id": 1, "isthing": False, "category_id": 0}, {"id": 2, "isthing": True, "category_id": 2}]
    return {"sem_seg": sem, "instances": inst, "panoptic_seg": (pan, info)}


def test_segments_have_the_areas_and_scores_of_the_outputs():
    segs = describe_segments(_predictions(), ["semantic", "instance", "panoptic"], META, threshold=0.5)
    table = [(s.task, s.category, round(s.score, 4), s.area, s.hex_color) for s in segs]
    assert table == [
        ("semantic", "sky", 0.8, 8, "#0000ff"), ("semantic", "grass", 0.9, 6, "#00ff00"),
        ("semantic", "circle", round(2.0 / 3.9, 4), 2, "#ff0000"),
        ("instance", "circle", 0.95, 2, "#ff0000"),  # the 0.3 one is under the threshold
        ("panoptic", "sky", 0.8, 8, "#0000ff"), ("panoptic", "circle", round(2.0 / 3.9, 4), 2, "#ff0000"),
    ]
    assert len(describe_segments(_predictions(), ["instance"], META, threshold=0.1)) == 2
    record = segments_record(segs[:1], 4, 4, ["semantic"], 0.5)
    assert record["segments"][0] == {"task": "semantic", "id": 0, "category": "sky", "category_id": 0,
                                     "score": pytest.approx(0.8), "area": 8, "color": "#0000ff",
                                     "area_fraction": 0.5}
    json.dumps(record)  # plain JSON


# ---------------------------------------------------------------------- the page's work, no browser
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """config.yaml + model.pth of a tiny random-weight model (7 shapes classes, 4 things)."""
    root = tmp_path_factory.mktemp("app")
    save_tiny_model(root)
    cv2.imwrite(str(root / "astronaut.png"), _photo()[:, :, ::-1])
    (root / "notes.jpg").write_text("this is text, not a JPEG\n")
    (root / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def segmenter(model_dir, tmp_path_factory):
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = str(model_dir / "model.pth")
    return _load_app().Segmenter(cfg, str(tmp_path_factory.mktemp("work")))


def test_the_page_draws_the_chosen_task_lists_its_segments_and_offers_downloads(segmenter, model_dir):
    assert segmenter.tasks == ["semantic", "instance", "panoptic", "all"]
    rendering, legend, downloads, status = segmenter(str(model_dir / "astronaut.png"), "all", 0.0)
    assert rendering.shape == (256 + BAND, 3 * 256, 3) and rendering.std() > 10
    png, segments_json = downloads
    assert np.array_equal(cv2.imread(png)[:, :, ::-1], rendering)
    record = json.loads(Path(segments_json).read_text())
    assert record["image"] == {"height": 256, "width": 256} and record["tasks"] == ["semantic", "instance", "panoptic"]
    assert legend.count("<tr class='segment'>") == len(record["segments"]) > 0
    assert status == f"astronaut.png (256×256): {len(record['segments'])} segments"
    semantic = [s for s in record["segments"] if s["task"] == "semantic"]
    assert sum(s["area"] for s in semantic) == 256 * 256  # every pixel has a class

    one, legend_one, _, _ = segmenter(str(model_dir / "astronaut.png"), "semantic", 0.0)
    assert one.shape == (256, 256, 3)  # one task: no title band
    assert legend_one.count("<td>semantic</td>") == len(semantic)


def test_small_pictures_are_shown_enlarged_with_sharp_pixels():
    app = _load_app()
    rendering = np.random.default_rng(0).integers(0, 255, (128 + BAND, 3 * 128, 3), dtype=np.uint8)
    shown = app.enlarged(rendering, 128)  # 384 // 128: three times
    assert shown.shape == (3 * (128 + BAND), 9 * 128, 3)
    assert np.array_equal(shown[::3, ::3], rendering) and np.array_equal(shown[2::3, 1::3], rendering)
    assert app.enlarged(rendering, 256) is rendering


@pytest.mark.parametrize("name, message", [
    ("notes.jpg", "**Cannot segment notes.jpg:** notes.jpg: not an image file (cannot identify its format)"),
    ("empty.png", "**Cannot segment empty.png:** the file is empty"),
    ("missing.png", "**Cannot segment missing.png:** missing.png: no such file"),
])
def test_a_bad_upload_is_one_line_on_the_page(segmenter, model_dir, name, message):
    assert segmenter(str(model_dir / name), "all", 0.5) == (None, "", None, message)


def test_no_model_is_one_line_on_how_to_train_one(tmp_path):
    app = _load_app()
    args = app.get_parser().parse_args(["--output-root", str(tmp_path)])
    with pytest.raises(ValueError, match=r"^no trained model under .*: train one with `make quickstart`"):
        app.resolve_model(args)
    older, newer = tmp_path / "a", tmp_path / "b" / "quickstart"
    for folder in (older, newer):
        folder.mkdir(parents=True)
        (folder / "model_final.pth").write_bytes(b"")
        time.sleep(0.01)
    (newer / "config.yaml").write_text("")
    assert app.resolve_model(args) == (str(newer / "config.yaml"), ["MODEL.WEIGHTS", str(newer / "model_final.pth")])
    os.utime(older / "model_final.pth")  # now the newest; its folder has no config: the quickstart's
    assert app.newest_model(str(tmp_path)) == (str(app.QUICKSTART_CONFIG), str(older / "model_final.pth"))


# ------------------------------------------------------------------------ the page in a browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(model_dir, tmp_path):
    """demo/app.py serving the tiny model on a free localhost port; yields its URL."""
    port = _free_port()
    log = open(tmp_path / "app.log", "w")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    proc = subprocess.Popen([sys.executable, str(APP), "--config-file", str(model_dir / "config.yaml"),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the page did not come up in 240 s"
            time.sleep(1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _overlay(page) -> np.ndarray:
    src = page.get_attribute("#overlay img", "src")
    data = page.request.get(src).body()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, src
    return img[:, :, ::-1]


@pytest.mark.slow
def test_the_page_in_a_real_browser(served, model_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    url, proc = served
    helpers = _load(SCREENSHOT, "screenshot_demo_page")
    upload = helpers.UPLOAD
    with sync_playwright() as p:
        browser = helpers.launch_chromium(p)  # Debian's chromium; its absence fails the test
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)

        # a real photo: an overlay of the three tasks, a legend, two downloads
        helpers.segment_in_page(page, str(model_dir / "astronaut.png"))
        overlay = _overlay(page)
        assert overlay.shape == (256 + BAND, 3 * 256, 3)
        semantic_panel = overlay[BAND:, :256].astype(int)
        assert overlay.std() > 20 and np.abs(semantic_panel - _photo()).mean() > 5  # drawn over the photo
        rows = page.locator("#legend tr.segment")
        assert rows.count() > 0
        assert "semantic" in rows.first.inner_text()
        assert page.inner_text("#status").startswith("astronaut.png (256×256): ")
        assert page.locator("#downloads").inner_text().count("astronaut_seg") == 2
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

        # a file that is no image: one line on the page, no trace of a traceback
        page.click("#upload button[aria-label='Clear']")
        page.set_input_files(upload, str(model_dir / "notes.jpg"))
        page.wait_for_function("document.querySelector('#status').innerText.includes('notes.jpg')",
                               timeout=60_000)
        status = page.inner_text("#status")
        assert status == "Cannot segment notes.jpg: notes.jpg: not an image file (cannot identify its format)"
        assert "Traceback" not in page.content()
        assert page.locator("#legend tr.segment").count() == 0

        # the server keeps serving: the photo again, as the semantic task alone
        page.click("#upload button[aria-label='Clear']")
        helpers.segment_in_page(page, str(model_dir / "astronaut.png"), task="semantic")
        assert _overlay(page).shape == (256, 256, 3)
        browser.close()
    assert proc.poll() is None
