#!/usr/bin/env python
"""Inference time and peak memory of a config on one synthetic image, on the machine it runs on.

    python benchmarks/inference.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \
        --size 512 --iters 10 [--backend torch|onnxruntime|openvino|openvino-bf16 [--onnx FILE]]
        [--precision fp32|bf16] [--threads N] [--profile] [KEY VALUE ...]

The model has random weights (nothing is downloaded); the image is size x size. The last line
printed is one JSON object (median_s, peak_rss_mb, config, torch version, threads).

With ``--official PATH`` (a checkout of facebookresearch/MaskFormer, /Mask2Former or tue-mps/eomt,
outside this tree) the same config, weights and image run through the official code too (the
official EoMT through its evaluation code for the config's task: benchmarks/_official_eomt.py),
each implementation in its own processes, alternating ``--rounds`` times; the outputs are
compared and the last JSON line holds ``speedup_vs_official`` (official median / ours) and
``memory_ratio_vs_official``. Several backends (``--backend torch,onnxruntime``) are timed in
the same rotation, so one invocation gives engine vs our PyTorch vs the official code
(``variants`` in the JSON line). ``--precision bf16`` runs our PyTorch network under bf16
autocast (TEST.PRECISION); ``--precision fp32,bf16`` times both in the rotation.
"""
import argparse
import os
import time

import _common as C

DEFAULT_CONFIG = "configs/ade20k-150/maskformer_R50_bs16_160k.yaml"
BACKENDS = ("torch", "onnxruntime", "openvino", "openvino-bf16")
PRECISIONS = ("fp32", "bf16")


def run_model(model, image, height: int, width: int):
    import torch
    with torch.no_grad():  # what detectron2's evaluation loop and DefaultPredictor do
        return model([{"image": image, "height": height, "width": width}])[0]


def save_outputs(path: str, out) -> None:
    import torch
    saved = {k: out[k] for k in ("sem_seg", "panoptic_classes", "instance_scores") if k in out}
    if "panoptic_seg" in out:
        ids, segments = out["panoptic_seg"]
        saved["panoptic_seg"] = ids
        saved["panoptic_categories"] = torch.tensor(
            [[s["id"], s["category_id"]] for s in segments], dtype=torch.int64).reshape(-1, 2)
        classes = torch.full_like(ids, -1, dtype=torch.int64)  # the class of each pixel, -1: none
        for s in segments:
            classes[ids == s["id"]] = s["category_id"]
        saved["panoptic_classes"] = classes
    if "instances" in out:
        inst = out["instances"]
        saved.update(instance_masks=inst.pred_masks, instance_scores=inst.scores,
                     instance_classes=inst.pred_classes)
    torch.save(saved, path)


def compare_outputs(ours_path: str, official_path: str) -> dict:
    """How far our outputs are from the official ones on the same weights and image."""
    ours, official = C.load_outputs(ours_path), C.load_outputs(official_path)
    agreement = {}
    if "sem_seg" in ours and "sem_seg" in official:
        agreement["sem_seg_max_abs_diff"] = float((ours["sem_seg"] - official["sem_seg"]).abs().max())
        agreement["sem_seg_argmax_equal"] = bool(
            (ours["sem_seg"].argmax(0) == official["sem_seg"].argmax(0)).all())
    if "panoptic_classes" in ours and "panoptic_classes" in official:  # also the official EoMT's
        agreement["panoptic_classes_equal_fraction"] = float(
            (ours["panoptic_classes"] == official["panoptic_classes"]).float().mean())
    if "panoptic_seg" in ours and "panoptic_seg" in official:
        agreement["panoptic_equal"] = bool(
            ours["panoptic_seg"].equal(official["panoptic_seg"])
            and ours["panoptic_categories"].equal(official["panoptic_categories"]))
    if "instance_scores" in ours and "instance_scores" in official:
        same_n = ours["instance_scores"].shape == official["instance_scores"].shape
        if "instance_masks" in official:  # the official EoMT gives scores only
            agreement["instances_equal"] = bool(
                same_n and ours["instance_masks"].equal(official["instance_masks"])
                and ours["instance_classes"].equal(official["instance_classes"]))
        if same_n:
            agreement["instance_scores_max_abs_diff"] = float(  # as sets (the official ones are unsorted)
                (ours["instance_scores"].sort().values - official["instance_scores"].sort().values).abs().max())
    return agreement


def profile(model, image, size: int) -> None:
    import torch
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_model(model, image, size, size)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def worker(args: argparse.Namespace) -> None:
    import torch
    C.set_threads(args)
    if args.precision:  # the official code has no such key (and runs in fp32)
        args.opts = list(args.opts) + ["TEST.PRECISION", args.precision]
    cfg = C.build_cfg(args, training=False)
    model = C.build_model(args, cfg, training=False)
    image = C.synthetic_image(args.size)
    if args.backend != "torch" and args.impl == C.OURS:  # the official code runs in torch
        attach_exported(args, model)
    times = []
    for it in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        out = run_model(model, image, args.size, args.size)
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
    if args.save_outputs:
        save_outputs(args.save_outputs, out)
    if args.profile:
        profile(model, image, args.size)
    C.print_result(C.result_line(args, times, backend=args.backend, precision=args.precision or "fp32",
                                 task_outputs=sorted(out),
                                 torch_threads=torch.get_num_threads()))


def attach_exported(args: argparse.Namespace, model) -> None:
    """Run ``model``'s network with ONNX Runtime or OpenVINO: from ``--onnx`` or exported here
    first."""
    import atexit
    import shutil
    import tempfile

    from maskformer_d2.deploy import attach_runtime, export_onnx
    from maskformer_d2.deploy.export import example_input
    path = args.onnx
    if not path:
        folder = tempfile.mkdtemp(prefix="mf_onnx_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = os.path.join(folder, "model.onnx")
        export_onnx(model, path, example_input(model, args.size, args.size))
    attach_runtime(model, path, threads=args.threads, engine=args.backend)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_arguments(ap, DEFAULT_CONFIG)
    ap.add_argument("--backend", default="torch",
                    help="where the network runs: torch, onnxruntime, openvino or openvino-bf16, or "
                         "several separated by commas (with --official: each timed in the same "
                         "rotation, the ratios between them printed). onnxruntime / openvino: the "
                         "network runs in that engine (--onnx FILE, or exported from the config and "
                         "weights first); pre/post-processing as in torch. openvino-bf16: OpenVINO in "
                         "bf16 (a CPU's bf16 matrix units where it has them; changes the logits)")
    ap.add_argument("--onnx", metavar="FILE", help="an export of tools/deploy/export_model.py")
    ap.add_argument("--precision", default=None,
                    help="precision of the torch backend (TEST.PRECISION): fp32 or bf16 (autocast where "
                         "the CPU has bf16 units), or fp32,bf16 (both, with --official)")
    ap.add_argument("--profile", action="store_true", help="print the torch profiler's top operators")
    C.pass_through("--onnx")
    args = ap.parse_args()
    backends = args.backend.split(",")
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        ap.error(f"--backend: unknown {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    precisions = (args.precision or "fp32").split(",")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        ap.error(f"--precision: unknown {', '.join(unknown)} (choose from {', '.join(PRECISIONS)})")
    if args.official and not args.save_outputs:
        variants = {}
        for backend in backends:
            for precision in precisions if backend == "torch" else ["fp32"]:
                name = f"{C.OURS} {backend}" + (" bf16" if precision == "bf16" else "")
                variants[name] = ["--backend", backend, "--precision", precision]
        C.compare_with_official(args, __file__, compare_outputs, variants=variants)
    elif len(backends) > 1 or len(precisions) > 1:
        ap.error("several --backend or --precision values need --official (they are timed in one "
                 "rotation with it)")
    else:
        worker(args)


if __name__ == "__main__":
    main()
