#!/usr/bin/env python
"""Evaluator time, stock detectron2 vs ours, on stored predictions (no model), and the metric
differences between the two.

    python benchmarks/evaluation.py [--num-images 2000] [--height 480] [--width 640]
        [--segments 20] [--detections 100] [--things 8 --stuff 4] [--tasks semantic,instance,panoptic]
        [--root DIR]

The set is synthetic (maskformer_d2.evaluation.synthetic): COCO-sized by default (images and
segments; 12 classes unless ``--things 80 --stuff 53`` gives COCO panoptic's 133), ground truth
written once under ``--root`` (default: a temporary folder), model outputs near the ground truth
drawn per image from a seed. For each task the stock evaluator (SemSegEvaluator, COCOEvaluator,
COCOPanopticEvaluator with per-class PQ: TEST.EVALUATOR detectron2) and ours (TEST.EVALUATOR
fast) get the very same outputs;
only their reset / process / evaluate calls are timed. The last line printed is one JSON object:
per task the seconds of each, the ratio stock / ours and the largest metric difference.

    python benchmarks/evaluation.py --cocoeval [--num-images 500]

times COCOeval alone (evaluate, accumulate, summarize of mask AP on the same results) in
pycocotools, faster-coco-eval (when installed) and hotcoco: how the instance evaluator's engine
was chosen.

    python benchmarks/evaluation.py --eval-only output/quickstart/model_final.pth [--baseline TREE]

times ``train_net.py --eval-only`` end to end (process start to exit) on the shapes val split:
ours as configured (fast evaluators, TEST.IMS_PER_BATCH of the config), ours with detectron2's
settings (stock evaluators, one image per batch) and, with ``--baseline``, the train_net.py of
another checkout (e.g. ``git worktree add /tmp/before <commit>``), alternating ``--rounds`` times.
"""
import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_CONFIG = os.path.join("configs", "shapes", "maskformer_R18_shapes.yaml")
TASKS = ("semantic", "instance", "panoptic")


def evaluators_for(task: str, name: str, out: str) -> Dict[str, object]:
    """The stock ("detectron2") and our ("fast") evaluator of ``task`` on dataset ``name``."""
    from detectron2.data import MetadataCatalog

    from maskformer_d2.evaluation import evaluators_of
    meta = MetadataCatalog.get(name)
    return {impl: evaluators_of(task, name, meta, os.path.join(out, impl), impl)[0]
            for impl in ("detectron2", "fast")}


def time_evaluators(args: argparse.Namespace) -> None:
    from maskformer_d2.evaluation.synthetic import (
        SyntheticSpec,
        metric_differences,
        register_synthetic_set,
        run_evaluators,
        synthetic_outputs,
    )
    logging.basicConfig(level=logging.WARNING)
    spec = SyntheticSpec(num_images=args.num_images, height=args.height, width=args.width,
                         segments=args.segments, detections=args.detections, things=args.things, stuff=args.stuff)
    with tempfile.TemporaryDirectory(prefix="mf_eval_bench_") as tmp:
        root = args.root or tmp
        start = time.perf_counter()
        name = register_synthetic_set(spec, root)
        print(f"ground truth of {spec.num_images} images {spec.height}x{spec.width} in {root} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        evaluators = {}
        for task in args.tasks.split(","):
            for impl, evaluator in evaluators_for(task, name, os.path.join(tmp, "out", task)).items():
                evaluators[(task, impl)] = evaluator
        pairs = (synthetic_outputs(spec, name, i) for i in range(spec.num_images))
        results = run_evaluators(evaluators, pairs)
    summary = {"images": spec.num_images, "height": spec.height, "width": spec.width,
               "classes": f"{spec.things}+{spec.stuff}",
               "segments": spec.segments, "detections": spec.detections, "threads": _threads(), "tasks": {}}
    totals = {"stock": 0.0, "fast": 0.0}
    for task in args.tasks.split(","):
        (stock, stock_s), (fast, fast_s) = results[(task, "detectron2")], results[(task, "fast")]
        diff = metric_differences(stock, fast)
        totals["stock"] += stock_s
        totals["fast"] += fast_s
        summary["tasks"][task] = {"stock_s": round(stock_s, 2), "fast_s": round(fast_s, 2),
                                  "speedup": round(stock_s / fast_s, 2), "max_metric_diff": max(diff.values())}
        print(f"{task:9s} stock {stock_s:7.2f} s   ours {fast_s:7.2f} s   {stock_s / fast_s:5.1f}x   "
              f"largest metric difference {max(diff.values()):.1e}", flush=True)
    summary["speedup"] = round(totals["stock"] / totals["fast"], 2)
    print(f"all       stock {totals['stock']:7.2f} s   ours {totals['fast']:7.2f} s   {summary['speedup']:5.1f}x")
    print(json.dumps(summary))


def time_cocoeval_engines(args: argparse.Namespace) -> None:
    import contextlib
    import io
    import itertools

    from maskformer_d2.evaluation.instance import instances_to_coco_results
    from maskformer_d2.evaluation.synthetic import SyntheticSpec, register_synthetic_set, synthetic_outputs
    spec = SyntheticSpec(num_images=args.num_images, height=args.height, width=args.width,
                         segments=args.segments, detections=args.detections)
    engines = {}
    with contextlib.suppress(ImportError):
        import pycocotools.coco
        import pycocotools.cocoeval
        engines["pycocotools"] = (pycocotools.coco.COCO, pycocotools.cocoeval.COCOeval)
    with contextlib.suppress(ImportError):
        import faster_coco_eval
        engines["faster-coco-eval"] = (faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster)
    with contextlib.suppress(ImportError):
        import hotcoco
        engines["hotcoco"] = (hotcoco.COCO, hotcoco.COCOeval)
    with tempfile.TemporaryDirectory(prefix="mf_cocoeval_") as tmp:
        name = register_synthetic_set(spec, args.root or tmp)
        from detectron2.data import MetadataCatalog
        json_file = MetadataCatalog.get(name).json_file
        results = list(itertools.chain.from_iterable(
            instances_to_coco_results(synthetic_outputs(spec, name, i)[1]["instances"], i + 1)
            for i in range(spec.num_images)))
        for r in results:
            r["category_id"] += 1  # dataset ids of the synthetic set's things
            r.pop("bbox")  # mask AP by mask area, as detectron2 evaluates it
        summary = {"images": spec.num_images, "detections": len(results), "engines": {}}
        for engine, (coco_cls, eval_cls) in engines.items():
            with contextlib.redirect_stdout(io.StringIO()):
                gt = coco_cls(json_file)
                start = time.perf_counter()
                coco_eval = eval_cls(gt, gt.loadRes([dict(r) for r in results]), "segm")
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
                seconds = time.perf_counter() - start
            summary["engines"][engine] = {"seconds": round(seconds, 3), "AP": float(coco_eval.stats[0])}
            print(f"{engine:17s} {seconds:7.2f} s   AP {coco_eval.stats[0]:.6f}", flush=True)
    print(json.dumps(summary))


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def time_eval_only(args: argparse.Namespace) -> None:
    """``train_net.py --eval-only`` wall times of the variants, alternating rounds."""
    def command(tree: str, *opts: str) -> List[str]:
        return [sys.executable, os.path.join(tree, "train_net.py"), "--config-file",
                os.path.join(tree, SHAPES_CONFIG), "--eval-only", "MODEL.WEIGHTS", os.path.abspath(args.eval_only),
                *opts]

    variants = {"ours": command(REPO),
                "ours with detectron2's settings": command(REPO, "TEST.EVALUATOR", "detectron2",
                                                           "TEST.IMS_PER_BATCH", "1")}
    if args.baseline:
        variants["baseline"] = command(os.path.abspath(args.baseline))
    times: Dict[str, List[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="mf_eval_only_") as tmp:
        for r in range(args.rounds):
            for name in reversed(list(variants)) if r % 2 else variants:
                cwd = args.baseline if name == "baseline" else REPO
                cmd = variants[name] + ["OUTPUT_DIR", os.path.join(tmp, str(len(times[name])))]
                start = time.perf_counter()
                proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if proc.returncode != 0:
                    sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
                times[name].append(seconds)
                print(f"round {r}: {name:32s} {seconds:6.1f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = "baseline" if args.baseline else "ours with detectron2's settings"
    print(json.dumps({"eval_only_median_s": medians, "reference": reference,
                      "speedup": round(medians[reference] / medians["ours"], 2), "rounds": args.rounds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-images", type=int, default=2000)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--segments", type=int, default=20, help="thing segments per image")
    ap.add_argument("--detections", type=int, default=100, help="predicted instances per image")
    ap.add_argument("--things", type=int, default=8, help="thing classes (COCO: 80)")
    ap.add_argument("--stuff", type=int, default=4, help="stuff classes (COCO panoptic: 53)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of " + ", ".join(TASKS))
    ap.add_argument("--root", help="where the ground truth is written (kept; default: a temporary folder)")
    ap.add_argument("--eval-only", metavar="WEIGHTS",
                    help="instead: time train_net.py --eval-only of the shapes recipe with these weights")
    ap.add_argument("--cocoeval", action="store_true",
                    help="instead: time COCOeval alone in pycocotools, faster-coco-eval and hotcoco")
    ap.add_argument("--baseline", metavar="TREE", help="with --eval-only: another checkout to time too")
    ap.add_argument("--rounds", type=int, default=2, help="with --eval-only: runs of each variant")
    args = ap.parse_args()
    unknown = sorted(set(args.tasks.split(",")) - set(TASKS))
    if unknown:
        ap.error(f"--tasks: unknown {', '.join(unknown)}")
    if args.eval_only:
        time_eval_only(args)
    elif args.cocoeval:
        time_cocoeval_engines(args)
    else:
        time_evaluators(args)


if __name__ == "__main__":
    main()
