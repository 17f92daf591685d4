#!/usr/bin/env python
"""MaskFormer demo: segment images, a video or a webcam stream and draw the result.

examples:
  python demo/demo.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \\
      --input photo.jpg 'photos/*.png' --output vis/ --opts MODEL.WEIGHTS model_final.pkl
  python demo/demo.py --config-file configs/coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml \\
      --input street.jpg --output vis/ --task all --opts MODEL.WEIGHTS https://.../model_final.pkl
  python demo/demo.py --config-file CFG --video-input clip.mp4 --output vis/ --opts MODEL.WEIGHTS W
"""
import argparse
import glob
import itertools
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

# detectron2 imports torch.jit.script, which torch now marks deprecated; not the user's concern
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
# FFmpeg's own messages about undecodable files (read before cv2 is imported); we report those ourselves
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

EPILOG = """
tasks:
  semantic   class of every pixel (all configs)
  instance   one mask per object of a "thing" class (needs a dataset with thing classes)
  panoptic   things as instances, stuff as regions (needs a dataset with thing classes)
  all        the three side by side in one image
  (default: what the config enables: panoptic, else instance, else semantic)

output:
  --output DIR      one PNG per input image (DIR/<input name>.png), DIR/<video name>.mp4 for a video
  --output FILE     with a single input image (FILE ends in .png/.jpg) or a video (.mp4)
  no --output       show the results in a window (needs a display and an OpenCV with GUI support)

exit status:
  0  everything was processed
  1  an input could not be read (missing file, glob matching nothing, not a regular file, not an
     image, corrupt or truncated file, more pixels than MASKFORMER_D2_MAX_IMAGE_PIXELS, by default
     4096x4096), or the config / checkpoint / video / exported model is unusable. A bad input
     among several is reported on its own line and the others are still processed; the exit
     status is 1 at the end.
  2  wrong command line (e.g. no --output and no display)
"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
GLOB_CHARS = set("*?[")

logger = logging.getLogger("maskformer_d2.demo")


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config-file", required=True, metavar="FILE", help="a maskformer_d2 / official MaskFormer YAML")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="images or quoted glob patterns ('dir/*.jpg')")
    source.add_argument("--video-input", metavar="VIDEO", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the first camera (stop with Esc or Ctrl-C)")
    ap.add_argument("--output", metavar="DIR_OR_FILE", help="where to write the renderings (see below)")
    ap.add_argument("--task", metavar="TASK", help="what to draw: semantic, instance, panoptic or all (see below)")
    ap.add_argument("--confidence-threshold", type=float, default=0.5, metavar="T",
                    help="instances scoring below T are not drawn (default 0.5)")
    ap.add_argument("--onnx", metavar="MODEL.onnx",
                    help="run the network exported by tools/deploy/export_model.py with ONNX Runtime "
                         "(MODEL.WEIGHTS is not read; pre- and post-processing are the same)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                    help="inference precision (TEST.PRECISION): fp32 (the default, exact) or bf16 (the network "
                         "under autocast where the CPU/GPU has bf16 units; else fp32 with a warning)")
    ap.add_argument("--verbose", action="store_true", help="show detectron2's log and the traceback of errors")
    ap.add_argument("--allow-unsafe-pickle", action="store_true",
                    help="load a checkpoint that holds arbitrary Python objects with full pickle, or a "
                         "TorchScript --onnx model.ts, either of which can run code from the file: only for "
                         "files you trust (also: MASKFORMER_D2_ALLOW_UNSAFE_PICKLE=1)")
    ap.add_argument("--allow-remote-config", action="store_true",
                    help="let the config's _BASE_ be an http(s) URL, downloaded into the cache: only for "
                         "sources you trust (also: MASKFORMER_D2_ALLOW_REMOTE_CONFIG=1)")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                    help="config overrides, e.g. MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu")
    return ap


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.setLevel(logging.INFO)
    logging.getLogger("maskformer_d2").setLevel(logging.INFO)
    for name in ("detectron2", "fvcore", "iopath"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def setup_cfg(args):
    from maskformer_d2.config import load_config
    from maskformer_d2.data.io import check_regular_file
    from maskformer_d2.errors import UsageError
    from maskformer_d2.visualization import task_choices

    if args.task is not None and args.task not in task_choices():
        raise UsageError(f"--task {args.task}: choose one of {', '.join(task_choices())}")
    check_regular_file(args.config_file, f"--config-file {args.config_file}", OSError)
    opts = list(args.opts) + (["TEST.PRECISION", args.precision] if args.precision else [])
    cfg = load_config(args.config_file, opts, opts_name="--opts", allow_remote=args.allow_remote_config or None)
    cfg.freeze()
    return cfg


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    from maskformer_d2.errors import first_line  # after the dependency check of the first import

    return first_line(e) or type(e).__name__


def _not_regular(path: str) -> str:
    """The one-line refusal of an input that exists but is no regular file (a FIFO, a device)."""
    from maskformer_d2.data.io import ImageReadError, check_regular_file

    try:
        check_regular_file(path, path)
    except ImageReadError as e:
        return str(e)
    return f"{path}: not a regular file"


def expand_inputs(patterns: List[str]) -> Tuple[List[str], List[str]]:
    """Paths named by ``patterns`` (globs expanded, sorted) and one error line per bad pattern."""
    paths, errors = [], []
    for pattern in patterns:
        if GLOB_CHARS & set(pattern) and not os.path.exists(pattern):
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
            if not matches:
                errors.append(f"{pattern}: the pattern matches no file")
            paths += matches
        elif not os.path.exists(pattern):
            errors.append(f"{pattern}: no such file")
        elif os.path.isdir(pattern):
            errors.append(f"{pattern}: is a directory; pass '{os.path.join(pattern, '*.jpg')}' (quoted) for its images")
        elif not os.path.isfile(pattern):  # a FIFO would block the reader, a device never ends
            errors.append(_not_regular(pattern))
        else:
            paths.append(pattern)
    return paths, errors


def output_paths(inputs: List[str], output: str) -> List[str]:
    """Where each input's rendering goes: ``output`` itself for one input named like an image,
    else ``output/<input stem>.png`` (made unique when two inputs share a name)."""
    names_a_file = output.lower().endswith(IMAGE_SUFFIXES) and not os.path.isdir(output)
    if names_a_file and len(inputs) == 1:
        return [output]
    if names_a_file:
        from maskformer_d2.errors import UsageError

        raise UsageError(f"--output {output} names one image file, but there are {len(inputs)} inputs; "
                         "pass a folder")
    used, out = set(), []
    for path in inputs:
        stem, candidate, i = Path(path).stem, Path(path).stem, 1
        while candidate in used:
            candidate, i = f"{stem}_{i}", i + 1
        used.add(candidate)
        out.append(os.path.join(output, candidate + ".png"))
    return out


def check_display(args) -> None:
    """Without --output the results go to a window: make sure one can be opened."""
    from maskformer_d2.errors import UsageError

    if args.output:
        return
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise UsageError("no --output given and no display ($DISPLAY is unset); pass --output DIR to write the results")
    import cv2

    try:
        cv2.namedWindow("MaskFormer", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise UsageError(
            "no --output given and this OpenCV cannot open windows (opencv-python-headless); "
            "pass --output DIR to write the results"
        ) from None


def video_output_path(video: str, output: str) -> str:
    """Where a video's rendering goes: ``output`` itself when it names a video file, else
    ``output/<name>.mp4``, the source's own suffix kept in the name unless it is .mp4
    (clip.mp4 -> clip.mp4, clip.avi -> clip_avi.mp4)."""
    if output.lower().endswith(VIDEO_SUFFIXES):
        return output
    suffix = Path(video).suffix.lower()
    stem = Path(video).stem + ("" if suffix in ("", ".mp4") else "_" + suffix[1:])
    return os.path.join(output, stem + ".mp4")


def check_output_folder(target: str) -> None:
    """Fail before the model is built when ``target``'s folder cannot be created or written."""
    folder = os.path.dirname(os.path.abspath(target))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f"--output: cannot create {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise OSError(f"--output: {folder} is not writable")


def plan(args) -> Tuple[List[str], List[Optional[str]], List[str]]:
    """Inputs, where each one's rendering goes (None: a window) and the bad input patterns (each
    reported here), all checked before the (slow) model build."""
    paths, errors = expand_inputs(args.input) if args.input else ([], [])
    for line in errors:  # the good inputs still run
        logger.error("error: %s", line)
    if args.input and not paths:
        return paths, [], errors
    from maskformer_d2.data.io import check_regular_file, max_image_pixels

    max_image_pixels()  # a bad MASKFORMER_D2_MAX_IMAGE_PIXELS fails before the model is built
    if args.video_input:
        check_regular_file(args.video_input, args.video_input, OSError)
    if args.input:
        targets = output_paths(paths, args.output) if args.output else [None] * len(paths)
    else:
        targets = [video_output_path(args.video_input or "webcam", args.output) if args.output else None]
    for target in {t for t in targets if t is not None}:
        check_output_folder(target)
    return paths, targets, errors


def run_images(args, demo, paths: List[str], targets: List[Optional[str]], errors: List[str]) -> int:
    """Render ``paths`` to ``targets``; ``errors`` are the input patterns already reported as bad."""
    import cv2
    from tqdm import tqdm

    from maskformer_d2.data.io import ImageReadError, read_image

    failed = len(errors)
    progress = tqdm(list(zip(paths, targets)), unit="image", disable=len(paths) < 2, file=sys.stderr)
    for path, target in progress:
        try:
            image = read_image(path, format="BGR")
        except ImageReadError as e:
            progress.write(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        start = time.perf_counter()
        predictions, vis = demo.run_on_image(image)
        seconds = time.perf_counter() - start
        where = ""
        if target is not None:
            if not cv2.imwrite(target, vis[:, :, ::-1]):
                progress.write(f"error: {target}: cannot be written", file=sys.stderr)
                failed += 1
                continue
            where = f" -> {target}"
        progress.write(f"{path}: {demo.summarize(predictions)} in {seconds:.2f}s{where}", file=sys.stderr)
        if target is None:
            cv2.imshow("MaskFormer", vis[:, :, ::-1])
            if cv2.waitKey(0) == 27:  # Esc
                break
    if failed:
        if len(paths) + len(errors) > 1:
            logger.error("error: %d of %d inputs failed", failed, len(paths) + len(errors))
        return 1
    return 0


def run_video(args, demo, target: Optional[str]) -> int:
    import cv2
    from tqdm import tqdm

    from maskformer_d2.data.io import ImageReadError, check_pixel_budget
    from maskformer_d2.visualization import read_frames

    name = "webcam" if args.webcam else args.video_input
    video = cv2.VideoCapture(0 if args.webcam else args.video_input)
    try:  # the container's frame size, before a frame is decoded
        check_pixel_budget(name, int(video.get(cv2.CAP_PROP_FRAME_WIDTH)),
                           int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)), what="frames")
    except ImageReadError as e:
        video.release()
        logger.error("error: %s", e)
        return 1
    ok, first = video.read() if video.isOpened() else (False, None)
    if not ok:
        video.release()
        logger.error("error: %s: cannot be opened as a video (no frame could be decoded)", name)
        return 1
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) if not args.webcam else 0
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0
    writer = None
    start, count = time.perf_counter(), 0
    try:
        stream = demo.run_on_video(itertools.chain([first], read_frames(video)))
        for _, vis in tqdm(stream, total=frames if frames > 0 else None, unit="frame", file=sys.stderr):
            count += 1
            if target is not None:
                if writer is None:
                    height, width = vis.shape[:2]
                    writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    if not writer.isOpened():
                        logger.error("error: %s: cannot be written (no mp4v encoder in this OpenCV)", target)
                        return 1
                writer.write(vis)
            else:
                cv2.imshow("MaskFormer", vis)
                if cv2.waitKey(1) == 27:  # Esc
                    break
    except KeyboardInterrupt:
        pass
    finally:
        video.release()
        if writer is not None:
            writer.release()
    seconds = time.perf_counter() - start
    where = f" -> {target}" if target else ""
    logger.info("%s: %d frames in %.1fs (%.2fs per frame)%s", name, count, seconds, seconds / count, where)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        from maskformer_d2.errors import UsageError  # the first import: fails here without a dependency
    except ImportError as e:  # maskformer_d2.errors.MissingDependencyError says how to install
        logger.error("error: %s", e)
        return 1
    try:
        check_display(args)
        paths, targets, errors = plan(args)
        if args.input and not paths:
            return 1
        if args.allow_unsafe_pickle:
            from maskformer_d2.checkpoint.safe_load import allow_unsafe_pickle

            allow_unsafe_pickle()
        cfg = setup_cfg(args)
        from maskformer_d2.visualization import VisualizationDemo

        demo = VisualizationDemo(cfg, task=args.task, confidence_threshold=args.confidence_threshold,
                                 exported=args.onnx)
        if args.input:
            return run_images(args, demo, paths, targets, errors)
        return run_video(args, demo, targets[0])
    except UsageError as e:
        parser.print_usage(sys.stderr)
        logger.error("error: %s", e)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as e:  # the CLI's one-line report; --verbose adds the traceback
        if args.verbose:
            logger.exception("error: %s", e)
            return 1
        message = _first_line(e)
        if not isinstance(e, (OSError, ValueError, KeyError)):  # not one of the errors we word ourselves
            message = f"{type(e).__name__}: {message} (--verbose shows the traceback)"
        logger.error("error: %s", message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
