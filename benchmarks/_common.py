"""What the benchmark scripts share: building a model from a config (ours, or the official
implementation's from its source tree), a synthetic input, peak memory, one JSON result line, and
running ours and the official code interleaved in separate processes (both register the same
detectron2 names, so they cannot share one process).

Nothing here asserts a time; the scripts print numbers.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OURS, OFFICIAL = "maskformer_d2", "official"


def add_common_arguments(ap: argparse.ArgumentParser, default_config: str) -> None:
    ap.add_argument("--config-file", default=os.path.join(REPO, default_config))
    ap.add_argument("--size", type=int, default=512, help="image height and width")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--official", metavar="PATH",
                    help="source tree of facebookresearch/MaskFormer, /Mask2Former or tue-mps/eomt: "
                         "time it too, on the same "
                         "weights and inputs, interleaved with ours, and print the ratio")
    ap.add_argument("--rounds", type=int, default=2,
                    help="with --official: processes per implementation, alternating")
    ap.add_argument("--impl", choices=[OURS, OFFICIAL], default=OURS, help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--save-outputs", help=argparse.SUPPRESS)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")


# the package of each official tree and its config function
OFFICIAL_PACKAGES = {"mask_former": ("mask_former", "add_mask_former_config"),
                     "mask2former": ("mask2former", "add_maskformer2_config")}


def official_package(official: str) -> str:
    """"eomt" for a tue-mps/eomt tree, "mask2former" for a facebookresearch/Mask2Former tree,
    else "mask_former"."""
    from _official_eomt import is_official_eomt_tree
    if is_official_eomt_tree(official):
        return "eomt"
    return "mask2former" if os.path.isdir(os.path.join(official, "mask2former")) else "mask_former"


def official_pythonpath(official: str, tmp: str) -> List[str]:
    """What the official tree needs on PYTHONPATH: itself and, for Mask2Former, an empty module
    named ``MultiScaleDeformableAttention`` (its compiled CUDA op, imported at import time; without
    it the official deformable attention falls back to its pure-PyTorch path, which is what runs
    on a CPU anyway)."""
    paths = [official]
    if official_package(official) == "mask2former":
        stub = os.path.join(tmp, "stub")
        os.makedirs(stub, exist_ok=True)
        open(os.path.join(stub, "MultiScaleDeformableAttention.py"), "w").close()
        paths.append(stub)
    return paths


def official_config_file(config_file: str, official: str) -> str:
    """The official tree's config at the same path relative to ``configs/`` (ours mirrors it)."""
    rel = os.path.relpath(os.path.abspath(config_file), os.path.join(REPO, "configs"))
    candidate = os.path.join(official, "configs", rel)
    return candidate if os.path.isfile(candidate) else config_file


def build_cfg(args: argparse.Namespace, training: bool):
    """The config of ``args.impl`` with MODEL.WEIGHTS = ``args.weights`` (or none) on the CPU
    (or ``args.device`` where a script has that flag)."""
    device = getattr(args, "device", "cpu")
    opts = list(args.opts) + ["MODEL.WEIGHTS", args.weights or "", "MODEL.DEVICE", device]
    official_eomt = bool(args.official) and official_package(args.official) == "eomt"
    if args.impl == OURS or official_eomt:
        # the official EoMT has no detectron2 config: it is built from ours (see _official_eomt)
        from maskformer_d2.config import load_config
        cfg = load_config(args.config_file, opts)
        if official_eomt:
            from _official_eomt import official_task

            from maskformer_d2.inference.tasks import set_enabled_tasks
            cfg = set_enabled_tasks(cfg, [official_task(cfg)])  # the official code evaluates one task
        return cfg
    import importlib

    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    package, add_config = OFFICIAL_PACKAGES[official_package(args.official)]
    if package == "mask2former":
        _stand_in_for_compiled_coco_eval()
    cfg = get_cfg()
    add_deeplab_config(cfg)
    getattr(importlib.import_module(package), add_config)(cfg)  # PYTHONPATH holds the official tree
    cfg.merge_from_file(official_config_file(args.config_file, args.official))
    cfg.merge_from_list(_known_keys_only(cfg, opts))
    return cfg


def _stand_in_for_compiled_coco_eval() -> None:
    """The official Mask2Former imports detectron2's compiled COCO evaluator at import time (for an
    evaluator the benchmarks never run); a detectron2 without compiled ops has none, so
    pycocotools' evaluator stands in under that name."""
    import types

    from pycocotools.cocoeval import COCOeval
    module = types.ModuleType("detectron2.evaluation.fast_eval_api")
    module.COCOeval_opt = COCOeval
    sys.modules.setdefault("detectron2.evaluation.fast_eval_api", module)


def _known_keys_only(cfg, opts: Sequence[str]) -> List[str]:
    """The KEY VALUE pairs of ``opts`` whose key the official config has (ours adds some, e.g.
    TRAIN_NUM_POINTS or TEST.INSTANCE_ON); the others are named on stderr and left out, so
    ours with an extra option is compared with the official default."""
    kept = []
    for key, value in zip(opts[0::2], opts[1::2]):
        node = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if node is None and key != "MODEL.WEIGHTS":
            print(f"official: leaving out {key} (not an official config key)", file=sys.stderr)
            continue
        kept += [key, value]
    return kept


def build_model(args: argparse.Namespace, cfg, training: bool):
    """The model of ``args.impl`` in train or eval mode, with ``args.weights`` loaded if given."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model as d2_build_model
    if args.impl == OFFICIAL and official_package(args.official) == "eomt":
        from _official_eomt import OfficialEoMT
        return OfficialEoMT(args.official, cfg, args.weights).train(training)
    model = d2_build_model(cfg)
    if args.weights:
        DetectionCheckpointer(model).load(args.weights)
    return model.train(training)


def build_optimizer(args: argparse.Namespace, cfg, model):
    """The optimiser each implementation's own ``Trainer`` builds for ``cfg``."""
    if args.impl == OURS:
        from maskformer_d2.engine import Trainer
    else:  # the official tree's train_net.py, loaded from its file
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "official_train_net", os.path.join(args.official, "train_net.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        Trainer = module.Trainer
    return Trainer.build_optimizer(cfg, model)


def synthetic_image(size: int, seed: int = 0):
    """A (3, size, size) float image with smooth structure (not pure noise), values 0..255."""
    import torch
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, size // 32), max(2, size // 32), generator=g) * 255
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (img[0] + torch.rand(3, size, size, generator=g) * 20).clamp(0, 255).round()


def synthetic_batch(batch: int, size: int, segments: int, num_classes: int, seed: int = 0) -> List[Dict]:
    """Training inputs: images with ``segments`` random rectangles each (bool masks, classes)."""
    import torch
    from detectron2.structures import Instances
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batch):
        masks = torch.zeros(segments, size, size, dtype=torch.bool)
        for s in range(segments):
            y0, x0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
            h, w = torch.randint(8, size // 2, (2,), generator=g).tolist()
            masks[s, y0:y0 + h, x0:x0 + w] = True
        inst = Instances((size, size))
        inst.gt_classes = torch.randint(0, num_classes, (segments,), generator=g)
        inst.gt_masks = masks
        out.append({"image": synthetic_image(size, seed + b), "height": size, "width": size,
                    "instances": inst})
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


def result_line(args: argparse.Namespace, times: Sequence[float], **extra) -> Dict:
    import torch
    return {
        "impl": args.impl, "config": os.path.relpath(os.path.abspath(args.config_file), REPO),
        "size": args.size, "iters": len(times), "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4), "times_s": [round(t, 4) for t in times], "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "opts": list(args.opts), **extra,
    }


def print_result(result: Dict) -> None:
    print(json.dumps(result), flush=True)


def set_threads(args: argparse.Namespace) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)


def save_random_weights(args: argparse.Namespace, path: str) -> None:
    """Our model of ``args.config_file`` with seeded random weights, as a checkpoint both
    implementations load (their state-dict keys are the same)."""
    import torch
    from detectron2.modeling import build_model as d2_build_model
    torch.manual_seed(0)
    model = d2_build_model(build_cfg(args, training=False))
    if hasattr(model, "mask_annealing"):  # EoMT: a trained model's state, masked attention annealed away
        model.mask_annealing.probs.zero_()
    torch.save({"model": model.state_dict()}, path)


def compare_with_official(
    args: argparse.Namespace, script: str, compare_outputs: Callable[[str, str], Dict],
    variants: Optional[Dict[str, List[str]]] = None,
) -> None:
    """Run ``script`` as ours and as the official code, alternating ``args.rounds`` times each in
    fresh processes on the same weights, then print per-process results, the output comparison
    and one JSON line with the ratio official / ours of the median times and of peak memory.

    ``variants`` (label -> extra flags of the script) times several variants of ours in the same
    rotation, e.g. one per inference backend; the JSON line then also holds ``variants``, each
    variant's median, ratios to the official code and to the first variant, and its outputs'
    agreement with the official ones; the summary fields are those of the first variant.
    """
    variants = variants or {OURS: []}
    with tempfile.TemporaryDirectory(prefix="mf_bench_") as tmp:
        weights = os.path.join(tmp, "weights.pth")
        save_random_weights(args, weights)
        order = [*variants, OFFICIAL]
        runs: Dict[str, List[Dict]] = {name: [] for name in order}
        outputs = {}
        for r in range(args.rounds):
            for name in reversed(order) if r % 2 else order:
                impl = OFFICIAL if name == OFFICIAL else OURS
                out_file = os.path.join(tmp, f"{order.index(name)}.pt")
                cmd = [sys.executable, script, "--impl", impl, "--weights", weights,
                       "--config-file", args.config_file, "--size", str(args.size),
                       "--iters", str(args.iters), "--warmup", str(args.warmup),
                       "--threads", str(args.threads), "--official", args.official,
                       "--save-outputs", out_file, *_extra_flags(args),
                       *variants.get(name, []), *args.opts]
                env = dict(os.environ)
                if impl == OFFICIAL:  # its package imports as `mask_former` / `mask2former`
                    env["PYTHONPATH"] = os.pathsep.join(
                        official_pythonpath(args.official, tmp) + [p for p in [env.get("PYTHONPATH")] if p])
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
                line = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"round {r}: {name:28s} median {line['median_s']:.3f} s  "
                      f"peak RSS {line['peak_rss_mb']:.0f} MiB", flush=True)
                runs[name].append(line)
                outputs[name] = out_file
        first = next(iter(variants))
        agreements = {name: compare_outputs(outputs[name], outputs[OFFICIAL]) for name in variants}
        agreement = agreements[first]
    times = {name: [t for line in lines for t in line["times_s"]] for name, lines in runs.items()}
    memory = {name: max(line["peak_rss_mb"] for line in lines) for name, lines in runs.items()}
    ours, official = times[first], times[OFFICIAL]
    summary = {k: v for k, v in runs[first][-1].items() if k != "times_s"}
    summary.update({
        "impl": "ratio", "median_s": statistics.median(ours), "min_s": min(ours),
        "official_median_s": statistics.median(official), "official_min_s": min(official),
        "speedup_vs_official": round(statistics.median(official) / statistics.median(ours), 3),
        "speedup_of_fastest_runs": round(min(official) / min(ours), 3),
        "peak_rss_mb": memory[first], "official_peak_rss_mb": memory[OFFICIAL],
        "memory_ratio_vs_official": round(memory[first] / memory[OFFICIAL], 3),
        **_cuda_memory_ratio(runs[first], runs[OFFICIAL]),
        "rounds": args.rounds, **agreement,
    })
    if len(variants) > 1:
        summary["variants"] = {name: {
            "median_s": statistics.median(times[name]),
            "speedup_vs_official": round(statistics.median(official) / statistics.median(times[name]), 3),
            f"speedup_vs_{first}": round(statistics.median(ours) / statistics.median(times[name]), 3),
            "peak_rss_mb": memory[name], **agreements[name],
        } for name in variants}
    print_result(summary)


def _cuda_memory_ratio(ours: List[Dict], official: List[Dict]) -> Dict:
    """Peak GPU memory of both and their ratio, where the runs report it (``peak_cuda_mb``)."""
    if not all("peak_cuda_mb" in line for line in ours + official):
        return {}
    mine, theirs = (max(line["peak_cuda_mb"] for line in lines) for lines in (ours, official))
    return {"peak_cuda_mb": mine, "official_peak_cuda_mb": theirs,
            "cuda_memory_ratio_vs_official": round(mine / theirs, 3)}


_EXTRA_FLAGS: List[str] = []


def _extra_flags(args: argparse.Namespace) -> List[str]:
    """Script-specific flags (registered with :func:`pass_through`) handed to the worker runs."""
    flags = []
    for name in _EXTRA_FLAGS:
        value = getattr(args, name.lstrip("-").replace("-", "_"))
        if value is not None:
            flags += [name, str(value)]
    return flags


def pass_through(*names: str) -> None:
    _EXTRA_FLAGS.extend(names)


def load_outputs(path: Optional[str]):
    import torch
    return torch.load(path, weights_only=True) if path else None
