"""Training as pictures: the curves of a run and the per-class numbers of an evaluation, drawn
from what detectron2 already records.

* ``OUTPUT_DIR/training_curves.png``: the loss terms (total and each term of the last decoder
  layer), the learning rate, and every evaluation's headline metrics (mIoU, mask AP, PQ) over
  the iterations, read from detectron2's ``metrics.json`` (its ``JSONWriter``);
* ``OUTPUT_DIR/per_class.png`` (``per_class_<dataset>.png`` with several test datasets): IoU, AP
  and PQ of every class in one evaluation, read from its results (``IoU-<class>``,
  ``AP-<class>``, ``PQ-<class>`` keys).

:class:`TrainingFigures` redraws the curves after each evaluation and at the end of training,
the trainer's evaluation (:func:`draw_evaluation`) the per-class chart;
``scripts/plot_metrics.py OUTPUT_DIR`` redraws them from any output folder. matplotlib is used
without pyplot (no display, no global state), and the files are replaced atomically.
"""
import io
import json
import logging
import os
import re
from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from detectron2.engine import HookBase
from detectron2.evaluation.testing import flatten_results_dict
from matplotlib.figure import Figure

from ..checkpoint.atomic import write_atomically

__all__ = [
    "METRICS_FILE",
    "CURVES_FILE",
    "HEADLINE_METRICS",
    "read_metrics",
    "training_curves",
    "per_class_figures",
    "save_figure",
    "draw_training_curves",
    "draw_output_folder",
    "draw_evaluation",
    "TrainingFigures",
]

logger = logging.getLogger("maskformer_d2")

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
#: evaluator task -> its headline metric, as detectron2's evaluators name them
HEADLINE_METRICS = {"sem_seg": "mIoU", "segm": "AP", "panoptic_seg": "PQ"}
#: evaluator task -> the prefix of its per-class keys
PER_CLASS_PREFIX = {"sem_seg": "IoU-", "segm": "AP-", "panoptic_seg": "PQ-"}
_LAYER_SUFFIX = re.compile(r"_\d+$")  # loss_ce_3: a term of an intermediate decoder layer


def _latest_run(records: List[Dict]) -> List[Dict]:
    """detectron2 appends to metrics.json: a resumed run repeats the iterations after its
    checkpoint, and a new run in the same folder starts again from 0. Where the iterations go
    back, the later records replace the earlier ones from that iteration on."""
    kept: List[Dict] = []
    for record in records:
        if kept and record["iteration"] < kept[-1]["iteration"]:
            kept = [r for r in kept if r["iteration"] < record["iteration"]]
        kept.append(record)
    return kept


def read_metrics(output_dir: str) -> List[Dict[str, float]]:
    """The records of the latest run in ``OUTPUT_DIR/metrics.json`` (one JSON object a line; a
    line cut short by a killed writer is skipped; see :func:`_latest_run`). Raises
    FileNotFoundError naming the file when there is none."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (train_net.py writes it in its OUTPUT_DIR)")
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iteration"), int):
                records.append(record)
    return _latest_run(records)


def _series(records: Iterable[Mapping], key: str) -> Tuple[List[int], List[float]]:
    pairs = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _loss_keys(records: List[Mapping]) -> List[str]:
    """total_loss, then each loss term of the final prediction (intermediate layers' left out)."""
    keys = {k for r in records for k in r if k.startswith("loss") and not _LAYER_SUFFIX.search(k)}
    return (["total_loss"] if any("total_loss" in r for r in records) else []) + sorted(keys)


def _metric_keys(records: List[Mapping]) -> List[str]:
    """Every evaluation's headline metrics, e.g. "sem_seg/mIoU" or "<dataset>/segm/AP"."""
    keys = {k for r in records for k in r
            if any(k == f"{task}/{m}" or k.endswith(f"/{task}/{m}") for task, m in HEADLINE_METRICS.items())}
    return sorted(keys)


def training_curves(records: List[Mapping], title: str = "") -> Figure:
    """Losses (log scale), learning rate and evaluation metrics over iterations, one panel each."""
    fig = Figure(figsize=(7.5, 8.5), layout="constrained")
    losses, lr, metrics = fig.subplots(3, 1, sharex=True)
    for key in _loss_keys(records):
        it, values = _series(records, key)
        losses.plot(it, values, label=key, linewidth=1.6 if key == "total_loss" else 1.0)
    losses.set_yscale("log")
    losses.set_ylabel("loss")
    losses.legend(fontsize=8, ncol=2)
    it, values = _series(records, "lr")
    lr.plot(it, values, color="tab:gray")
    lr.set_ylabel("learning rate")
    for key in _metric_keys(records):
        it, values = _series(records, key)
        metrics.plot(it, values, marker="o", label=key)
        if values:
            metrics.annotate(f"{values[-1]:.1f}", (it[-1], values[-1]), textcoords="offset points",
                             xytext=(4, 4), fontsize=8)
    metrics.set_ylabel("evaluation")
    metrics.set_xlabel("iteration")
    if metrics.lines:
        metrics.legend(fontsize=8)
    else:
        metrics.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=metrics.transAxes)
    for ax in (losses, lr, metrics):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def _per_class_groups(results: Mapping[str, float]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Flat evaluation results -> {dataset prefix ("" for one dataset): {metric: {class: value}}}."""
    groups: Dict[str, Dict[str, Dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for key, value in results.items():
        parts = key.split("/")
        if len(parts) < 2 or parts[-2] not in PER_CLASS_PREFIX:
            continue
        prefix = PER_CLASS_PREFIX[parts[-2]]
        if parts[-1].startswith(prefix) and isinstance(value, (int, float)):
            metric = prefix[:-1]
            groups["/".join(parts[:-2])][metric][parts[-1][len(prefix):]] = float(value)
    return {k: dict(v) for k, v in groups.items()}


def _per_class_figure(by_metric: Dict[str, Dict[str, float]], title: str) -> Figure:
    """One horizontal bar chart per metric, classes sorted from worst to best."""
    metrics = [m for m in ("IoU", "AP", "PQ") if m in by_metric]
    rows = max(len(v) for v in by_metric.values())
    fig = Figure(figsize=(4.0 * len(metrics) + 1.5, max(2.5, 0.28 * rows + 1.2)), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        items = sorted(by_metric[metric].items(), key=lambda kv: (kv[1] != kv[1], kv[1]))  # NaN last
        names = [k for k, _ in items]
        values = [0.0 if v != v else v for _, v in items]
        ax.barh(range(len(items)), values, color="tab:blue")
        ax.set_yticks(range(len(items)), names, fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel(metric)
        for y, (_, v) in enumerate(items):
            ax.text(min(v if v == v else 0.0, 100) + 1, y, "n/a" if v != v else f"{v:.1f}", va="center", fontsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    return fig


def per_class_figures(results: Mapping, title: str = "per class") -> Dict[str, Figure]:
    """File name -> figure of the per-class numbers in ``results`` (nested, as an evaluator returns
    them, or flat "task/metric" keys as in metrics.json): ``per_class.png`` for one dataset,
    ``per_class_<dataset>.png`` each for several. Empty when ``results`` has no per-class keys."""
    flat = flatten_results_dict(results) if any(isinstance(v, Mapping) for v in results.values()) else results
    figures = {}
    for dataset, by_metric in sorted(_per_class_groups(flat).items()):
        name = f"per_class_{dataset.replace('/', '_')}.png" if dataset else "per_class.png"
        figures[name] = _per_class_figure(by_metric, f"{title} {dataset}".strip())
    return figures


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
    """Write ``fig`` as a PNG at ``path`` (replaced atomically); returns ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomically(path, lambda f: f.write(buffer.getvalue()))
    return path


def _run_title(output_dir: str) -> str:
    return os.path.basename(os.path.normpath(output_dir))


def draw_training_curves(output_dir: str, records: Optional[List[Dict]] = None) -> str:
    """Draw ``OUTPUT_DIR/training_curves.png`` from ``records`` (default: its metrics.json)."""
    records = read_metrics(output_dir) if records is None else records
    return save_figure(training_curves(records, _run_title(output_dir)), os.path.join(output_dir, CURVES_FILE))


def draw_output_folder(output_dir: str) -> List[str]:
    """Redraw the training curves and the last evaluation's per-class charts of a run from its
    ``metrics.json``; returns the written paths."""
    records = read_metrics(output_dir)
    written = [draw_training_curves(output_dir, records)]
    evaluated = [r for r in records if _per_class_groups(r)]
    if evaluated:
        last = evaluated[-1]
        written += draw_evaluation(last, output_dir, f"{_run_title(output_dir)}, iteration {last['iteration']}")
    return written


def draw_evaluation(results: Mapping, output_dir: str, title: str = "per class") -> List[str]:
    """The per-class charts of one evaluation's results in ``output_dir``; returns the paths."""
    return [save_figure(fig, os.path.join(output_dir, name))
            for name, fig in per_class_figures(results, title).items()]


class TrainingFigures(HookBase):
    """Redraws ``training_curves.png`` after each evaluation (every ``eval_period`` iterations)
    and at the end of training, in the main process (the trainer's evaluation draws the per-class
    chart itself). Place it after detectron2's ``PeriodicWriter`` so that ``metrics.json``
    already holds the evaluation. A figure that cannot be drawn is a warning, never the end of
    training."""

    def __init__(self, output_dir: str, eval_period: int):
        self._output_dir = output_dir
        self._period = eval_period

    def _draw(self) -> None:
        try:
            draw_training_curves(self._output_dir)
        except (OSError, ValueError) as e:
            logger.warning(f"could not draw the training figures in {self._output_dir}: {e}")

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._draw()

    def after_train(self):
        if self.trainer.iter > self.trainer.start_iter:
            self._draw()
