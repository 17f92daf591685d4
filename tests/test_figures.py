"""Training as pictures (maskformer_d2.engine.figures, scripts/plot_metrics.py): curves and
per-class charts drawn from what detectron2 records. The figures of a real training run are
checked in tests/test_train_e2e.py."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskformer_d2.engine import figures

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["wall", "sky", "circle"]


def _records():
    rows = []
    for it in range(19, 200, 20):
        row = {"iteration": it, "total_loss": 10.0 / (1 + it / 50), "loss_ce": 1.0 / (1 + it / 50),
               "loss_ce_0": 2.0, "loss_dice": 0.5, "lr": 1e-4 * (1 - it / 200)}
        rows.append(row)
    for it, miou in ((99, 40.0), (199, 70.0)):
        row = {"iteration": it, "sem_seg/mIoU": miou, "segm/AP": miou / 2, "panoptic_seg/PQ": miou - 5}
        row.update({f"sem_seg/IoU-{c}": miou + i for i, c in enumerate(CLASSES)})
        row.update({f"panoptic_seg/PQ-{c}": miou - i for i, c in enumerate(CLASSES)})
        row.update({"segm/AP-circle": float("nan")})
        rows.append(row)
    return sorted(rows, key=lambda r: r["iteration"])  # as detectron2 writes them


@pytest.fixture
def run_folder(tmp_path):
    lines = [json.dumps(r) for r in _records()] + ['{"iteration": 210, "total_lo']  # a cut-short last line
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n")
    return tmp_path


def _png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, path
    return img


def test_series_keep_the_final_loss_terms_and_every_headline_metric(run_folder):
    records = figures.read_metrics(str(run_folder))
    assert len(records) == 12  # the cut-short line is skipped
    assert figures._loss_keys(records) == ["total_loss", "loss_ce", "loss_dice"]  # no loss_ce_0
    assert figures._metric_keys(records) == ["panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU"]
    it, values = figures._series(records, "sem_seg/mIoU")
    assert it == [99, 199] and values == [40.0, 70.0]


def test_a_resumed_or_repeated_run_replaces_the_records_it_repeats(tmp_path):
    iterations = [19, 39, 59, 39, 59, 79,  # resumed from iteration 30: 39 and 59 again
                  19, 39]  # a new run in the same folder
    lines = [json.dumps({"iteration": it, "total_loss": float(n)}) for n, it in enumerate(iterations)]
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n")
    assert [(r["iteration"], r["total_loss"]) for r in figures.read_metrics(str(tmp_path))] == [(19, 6.0), (39, 7.0)]
    (tmp_path / "metrics.json").write_text("\n".join(lines[:6]) + "\n")
    assert [r["total_loss"] for r in figures.read_metrics(str(tmp_path))] == [0.0, 3.0, 4.0, 5.0]


def test_per_class_groups_by_dataset_and_metric():
    flat = {"sem_seg/IoU-sky": 90.0, "sem_seg/mIoU": 80.0, "panoptic_seg/PQ-sky": 70.0,
            "ade/sem_seg/IoU-sky": 10.0, "segm/AP-sky": 5.0, "segm/APs": 1.0}
    groups = figures._per_class_groups(flat)
    assert groups == {"": {"IoU": {"sky": 90.0}, "PQ": {"sky": 70.0}, "AP": {"sky": 5.0}},
                      "ade": {"IoU": {"sky": 10.0}}}
    nested = {"coco": {"sem_seg": {"IoU-a": 1.0}}, "ade": {"sem_seg": {"IoU-b": 2.0}}}
    assert sorted(figures.per_class_figures(nested)) == ["per_class_ade.png", "per_class_coco.png"]
    assert figures.per_class_figures({"sem_seg": {"mIoU": 3.0}}) == {}


def test_output_folder_is_drawn_as_curves_and_per_class_charts(run_folder):
    written = figures.draw_output_folder(str(run_folder))
    assert [Path(p).name for p in written] == ["training_curves.png", "per_class.png"]
    curves = _png(run_folder / "training_curves.png")
    assert curves.shape[:2] == (850, 750)  # 7.5 x 8.5 inches at 100 dpi
    per_class = _png(run_folder / "per_class.png")
    assert per_class.shape[1] == 3 * 400 + 150  # IoU, AP and PQ panels
    for img in (curves, per_class):
        assert img.std() > 20  # drawn, not a blank canvas
    # the bars are drawn in matplotlib's first colour (tab:blue, BGR 180 119 31)
    assert (np.abs(per_class.astype(int) - [180, 119, 31]).sum(axis=2) < 30).sum() > 1000
    assert not list(run_folder.glob(".*.tmp-*"))  # written atomically, nothing left behind


def test_a_folder_without_evaluation_gets_curves_only(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": 3.0, "lr": 0.1}) + "\n")
    assert [Path(p).name for p in figures.draw_output_folder(str(tmp_path))] == ["training_curves.png"]


@pytest.mark.slow
def test_plot_metrics_command(run_folder, tmp_path):
    script = REPO / "scripts" / "plot_metrics.py"
    ok = subprocess.run([sys.executable, str(script), str(run_folder)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == [str(run_folder / "training_curves.png"), str(run_folder / "per_class.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([sys.executable, str(script), str(empty)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"plot_metrics: error: {empty / 'metrics.json'}: no such file (train_net.py writes it in its OUTPUT_DIR)"]
