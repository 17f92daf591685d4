#!/usr/bin/env python
"""A web page to try a model: upload an image (or pick an example), choose the task and the score
threshold, see the overlay and the legend, download the rendering and the segments.

examples:
  python demo/app.py                      # the newest model under output/ (make quickstart trains one)
  python demo/app.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \\
      --opts MODEL.WEIGHTS model_final.pkl
  python demo/app.py --host 0.0.0.0 --port 8080   # reachable from other machines (default: this one only)

The page is served by Gradio on http://127.0.0.1:7860 by default. A file that is no image, too
large (--max-file-size, and more pixels than MASKFORMER_D2_MAX_IMAGE_PIXELS) or empty gets a
one-line message on the page; the server keeps serving.
"""
import argparse
import html
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

# detectron2 imports torch.jit.script, which torch now marks deprecated; not the user's concern
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
# the page needs no internet: no usage statistics or version checks sent to Gradio's servers
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_CONFIG = REPO / "configs" / "shapes" / "maskformer_R18_shapes.yaml"
EXAMPLES = REPO / "demo" / "examples"
TASK_LABELS = {"semantic": "semantic", "instance": "instance", "panoptic": "panoptic", "all": "all"}
KEEP_RESULTS_S = 3600  # downloads of older requests are deleted
MIN_DISPLAY_HEIGHT = 384  # smaller pictures are shown enlarged (whole times, pixels kept sharp)

logger = logging.getLogger("maskformer_d2.app")


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", metavar="FILE",
                    help="a maskformer_d2 / official config (default: the newest model trained under "
                         "output/, with the config it was trained with)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: %(default)s, this machine only)")
    ap.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    ap.add_argument("--output-root", default=str(REPO / "output"), metavar="DIR",
                    help="where to look for the newest model without --config-file (default: %(default)s)")
    ap.add_argument("--confidence-threshold", type=float, default=0.5, metavar="T",
                    help="the page's initial score threshold (default 0.5)")
    ap.add_argument("--max-file-size", default="25mb", help="largest upload (default: %(default)s)")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                    help="config overrides, e.g. MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu")
    return ap


def newest_model(output_root: str) -> Optional[Tuple[str, str]]:
    """(config, weights) of the newest ``model_final.pth`` under ``output_root``: the config the
    run wrote beside it (``config.yaml``), else the quickstart's. None when there is none."""
    root = Path(output_root)
    found = sorted(root.glob("**/model_final.pth"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        return None
    weights = found[-1]
    config = weights.parent / "config.yaml"
    return str(config if config.is_file() else QUICKSTART_CONFIG), str(weights)


def resolve_model(args) -> Tuple[str, List[str]]:
    """The config file and overrides to serve; ValueError with the one line to say otherwise."""
    if args.config_file:
        return args.config_file, list(args.opts)
    found = newest_model(args.output_root)
    if found is None:
        raise ValueError(f"no trained model under {args.output_root}: train one with `make quickstart` "
                         "(or pass --config-file CFG --opts MODEL.WEIGHTS W)")
    config, weights = found
    return config, ["MODEL.WEIGHTS", weights, *args.opts]


class Segmenter:
    """The page's work: read an upload, predict once (every task the model has), draw the chosen
    task(s), describe the segments, write the downloads. Thread-safe (one prediction at a time)."""

    def __init__(self, cfg, work_dir: str):
        from maskformer_d2.data.metadata import thing_ids_from_metadata
        from maskformer_d2.visualization import ALL, VisualizationDemo

        has_things = thing_ids_from_metadata(cfg.DATASETS.TRAIN, load_if_needed=True) is not None
        self.demo = VisualizationDemo(cfg, task=ALL if has_things else "semantic")
        self.tasks = self.demo.task_names + ([ALL] if len(self.demo.task_names) > 1 else [])
        self.work_dir = work_dir
        self._lock = threading.Lock()

    def _prune(self) -> None:
        now = time.time()
        for entry in os.scandir(self.work_dir):
            if entry.is_dir() and now - entry.stat().st_mtime > KEEP_RESULTS_S:
                shutil.rmtree(entry.path, ignore_errors=True)

    def _write_downloads(self, name: str, rendering, record) -> List[str]:
        import cv2

        self._prune()
        folder = tempfile.mkdtemp(dir=self.work_dir)
        png = os.path.join(folder, f"{name}_segmented.png")
        cv2.imwrite(png, rendering[:, :, ::-1])
        segments = os.path.join(folder, f"{name}_segments.json")
        with open(segments, "w") as f:
            json.dump(record, f, indent=1)
        return [png, segments]

    def __call__(self, path: Optional[str], task: str, threshold: float, progress=None):
        """(rendering RGB or None, legend HTML, download paths or None, status markdown)."""
        from maskformer_d2.data.io import read_image
        from maskformer_d2.errors import first_line
        from maskformer_d2.visualization import ALL, describe_segments, segments_record

        progress = progress or (lambda *a, **k: None)
        if not path:
            return None, "", None, "Upload an image or pick an example."
        name = Path(path).name
        try:
            progress(0.05, desc="reading the image")
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                raise ValueError("the file is empty")
            image = read_image(path, format="BGR")
            names = self.demo.task_names if task == ALL else [task]
            progress(0.2, desc="segmenting")
            with self._lock:
                predictions = self.demo.predictor(image)
            progress(0.8, desc="drawing")
            rendering = self.demo.draw(image, predictions, names, threshold)
            segments = describe_segments(predictions, names, self.demo.metadata, threshold)
            record = segments_record(segments, *image.shape[:2], names, threshold)
            downloads = self._write_downloads(Path(name).stem, rendering, record)
        except Exception as e:  # the page's boundary: one line for the user, the details in the log
            logger.warning("request %s failed", name, exc_info=not isinstance(e, (OSError, ValueError)))
            message = (first_line(e) or type(e).__name__).replace(str(path), name)
            return None, "", None, f"**Cannot segment {html.escape(name)}:** {html.escape(message)}"
        h, w = image.shape[:2]
        status = f"{html.escape(name)} ({w}×{h}): {len(segments)} segment{'s' if len(segments) != 1 else ''}"
        return enlarged(rendering, h), legend_html(segments, h * w), downloads, status


def enlarged(rendering, image_height: int):
    """The rendering of an image ``image_height`` high as shown on the page: small ones enlarged
    a whole number of times (nearest pixel) to about :data:`MIN_DISPLAY_HEIGHT`."""
    import cv2

    factor = max(1, MIN_DISPLAY_HEIGHT // max(1, image_height))
    if factor == 1:
        return rendering
    return cv2.resize(rendering, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def legend_html(segments: Sequence, pixels: int) -> str:
    """A table of the segments: colour, task, class, score, area (pixels and percent)."""
    if not segments:
        return "<p class='legend-empty'>No segment above the threshold.</p>"
    rows = []
    for s in segments:
        score = "–" if s.score is None else f"{s.score:.2f}"
        rows.append(
            f"<tr class='segment'><td><span class='swatch' style='display:inline-block;width:14px;"
            f"height:14px;background:{s.hex_color};border:1px solid #444'></span></td>"
            f"<td>{s.task}</td><td class='category'>{html.escape(s.category)}</td><td>{score}</td>"
            f"<td>{s.area}</td><td>{100 * s.area / max(1, pixels):.1f}%</td></tr>")
    head = "<tr><th></th><th>task</th><th>class</th><th>score</th><th>area (px)</th><th>area</th></tr>"
    return f"<table class='legend'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def example_images() -> List[str]:
    return [str(p) for p in sorted(EXAMPLES.glob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]


def build_page(segmenter: Segmenter, title: str, threshold: float):
    import gradio as gr

    def run(path, task, score_threshold, progress=gr.Progress()):  # noqa: B008 (how Gradio finds the bar)
        return segmenter(path, task, score_threshold, progress)

    with gr.Blocks(title="maskformer_d2 demo", analytics_enabled=False) as page:
        gr.Markdown(f"## maskformer_d2 — {html.escape(title)}\nUpload an image or pick an example, "
                    "choose the task and the score threshold.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", type="filepath", elem_id="upload")
                task = gr.Radio(segmenter.tasks, value=segmenter.tasks[-1], label="Task", elem_id="task")
                score = gr.Slider(0.0, 1.0, value=threshold, step=0.05, label="Score threshold (instances)",
                                  elem_id="threshold")
                button = gr.Button("Segment", variant="primary", elem_id="run")
                gr.Examples(example_images(), inputs=[upload], label="Examples")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload an image or pick an example.", elem_id="status")
                overlay = gr.Image(label="Result", type="numpy", interactive=False, elem_id="overlay",
                                   format="png")
                legend = gr.HTML(elem_id="legend")
                downloads = gr.File(label="Download (PNG + segments JSON)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        outputs = [overlay, legend, downloads, status]
        button.click(run, [upload, task, score], outputs)
        upload.upload(run, [upload, task, score], outputs)
    return page


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from maskformer_d2.errors import first_line

    try:
        from maskformer_d2.config import load_config

        config, opts = resolve_model(args)
        cfg = load_config(config, opts, opts_name="--opts")
        cfg.freeze()
        work_dir = tempfile.mkdtemp(prefix="maskformer_d2_app_")
        segmenter = Segmenter(cfg, work_dir)
        weights = Path(cfg.MODEL.WEIGHTS)
        page = build_page(segmenter, f"{weights.parent.name}/{weights.name}" if cfg.MODEL.WEIGHTS else
                          f"{Path(config).name}, random weights", args.confidence_threshold)
    except Exception as e:  # a bad config or checkpoint: one line, exit 1
        if os.environ.get("MASKFORMER_D2_DEBUG"):
            raise
        print(f"demo/app.py: error: {first_line(e) or type(e).__name__}", file=sys.stderr)
        return 1
    print(f"serving {config} ({cfg.MODEL.WEIGHTS or 'random weights'}) on http://{args.host}:{args.port}",
          flush=True)
    try:
        page.queue().launch(server_name=args.host, server_port=args.port, max_file_size=args.max_file_size,
                            show_error=False, quiet=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
