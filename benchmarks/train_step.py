#!/usr/bin/env python
"""Time of one training step (forward, losses, backward, optimiser) and peak memory of a config,
on a fixed synthetic batch, on the machine it runs on. Prints numbers; asserts nothing.

    python benchmarks/train_step.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \
        --size 512 --batch 2 --segments 20 --iters 5 [--parts] [--threads N] [KEY VALUE ...]

Random weights, ``--batch`` images of size x size with ``--segments`` rectangles each; the
optimiser is the one each implementation's Trainer builds from the config (AdamW with gradient
clipping for the ADE20K configs). ``--parts`` also times backbone / pixel decoder / predictor
(EoMT: ViT blocks / query blocks / head) / criterion / backward / optimiser separately, each
summed over a step (ours only). The last line printed is one JSON
object (median_s, peak_rss_mb, config, torch version, threads, the first step's losses).
``--device cuda [--precision amp]`` runs both on the GPU (the official configs train with
AMP); nothing of the CPU path needs one. Both run without PyTorch's huge-page advice, as their
``train_net.py`` start them; ``--huge-pages ours|both`` sets ``THP_MEM_ALLOC_ENABLE=1`` for ours /
both (it halved our step on one VM: docs/performance.md).

With ``--official PATH`` (a checkout of facebookresearch/MaskFormer, outside this tree) the
official code runs the same steps from the same weights, in alternating processes; the last JSON
line holds ``speedup_vs_official``, ``memory_ratio_vs_official`` and the largest relative
difference of the first step's losses (exact agreement needs ``MODEL.MASK_FORMER.DROPOUT 0.0``;
point-sampled losses agree too: the generator is seeded right before the first step and both
draw in the same order). PATH may also be a checkout of facebookresearch/Mask2Former.
"""
import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

import _common as C

DEFAULT_CONFIG = "configs/ade20k-150/maskformer_R50_bs16_160k.yaml"


def time_parts(model, times) -> None:
    """Forward hooks that add the time of the model's main parts to ``times`` (name -> seconds;
    a part called several times in a step, such as EoMT's blocks or a matcher per decoder
    layer, adds up)."""
    def timed(module, name):
        def pre(m, inp):
            m._t0 = time.perf_counter()

        def post(m, inp, out):
            times[name] += time.perf_counter() - m._t0
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def timed_method(obj, method, name):  # the heads call pixel_decoder.forward_features
        inner = getattr(obj, method)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            times[name] += time.perf_counter() - t0
            return out
        setattr(obj, method, wrapper)

    head = model.sem_seg_head
    if hasattr(head, "pixel_decoder"):  # MaskFormer, Mask2Former
        timed(model.backbone, "fwd backbone")
        timed_method(head.pixel_decoder, "forward_features", "fwd pixel decoder")
        timed(head.predictor, "fwd transformer predictor")
    else:  # EoMT drives the ViT's blocks itself and predicts before each query block
        blocks = list(model.backbone.blocks)
        first = len(blocks) - model.num_blocks
        for block in blocks[:first]:
            timed(block, "fwd ViT blocks")
        for block in blocks[first:]:
            timed(block, "fwd ViT query blocks")
        timed(head, "fwd head (every prediction)")
    timed(model.criterion, "fwd criterion (+matcher)")
    if hasattr(model.criterion, "matcher"):
        timed(model.criterion.matcher, "matcher (part of criterion)")


def worker(args: argparse.Namespace) -> None:
    # before torch starts (it reads the variable once)
    if args.huge_pages == "both" or (args.huge_pages == "ours" and args.impl == C.OURS):
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    else:
        os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
    import torch
    cuda, amp = args.device == "cuda", args.precision == "amp"
    if cuda and not torch.cuda.is_available():
        sys.exit("train_step: --device cuda, but torch sees no CUDA device here")
    if amp and not cuda:
        sys.exit("train_step: --precision amp needs --device cuda (detectron2's AMPTrainer: "
                 "float16 autocast on a GPU)")
    C.set_threads(args)
    cfg = C.build_cfg(args, training=True)
    model = C.build_model(args, cfg, training=True)
    optimizer = C.build_optimizer(args, cfg, model)
    batch = C.synthetic_batch(args.batch, args.size, args.segments, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    parts, step = defaultdict(list), defaultdict(float)  # per step: name -> seconds
    if args.parts and args.impl == C.OURS:
        time_parts(model, step)
    times, first_losses = [], None
    # as detectron2's AMPTrainer: float16 autocast for the forward, a gradient scaler
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def now() -> float:  # GPU work is asynchronous: wait for it before reading the clock
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    # point-sampled losses draw from torch's generator: both implementations start from here
    torch.manual_seed(0)
    for it in range(args.warmup + args.iters):
        step.clear()
        t0 = now()
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            losses = model(batch)
        loss = sum(losses.values())
        t1 = now()
        optimizer.zero_grad()
        (scaler.scale(loss) if amp else loss).backward()
        t2 = now()
        if amp:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        t3 = now()
        if first_losses is None:
            first_losses = {k: float(v.detach()) for k, v in losses.items()}
        if it >= args.warmup:
            times.append(t3 - t0)
            step.update({"forward total": t1 - t0, "backward": t2 - t1, "optimizer step": t3 - t2})
            for name, seconds in step.items():
                parts[name].append(seconds)
    for name, v in parts.items():
        print(f"{name:32s} {1000 * statistics.median(v):8.1f} ms (median over steps)")
    if args.save_outputs:
        torch.save({k: torch.tensor(v) for k, v in first_losses.items()}, args.save_outputs)
    extra = {"peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {}
    C.print_result(C.result_line(args, times, batch=args.batch, segments=args.segments,
                                 loss=round(sum(first_losses.values()), 5), device=args.device,
                                 precision=args.precision, **extra))


def compare_losses(ours_path: str, official_path: str) -> dict:
    ours, official = C.load_outputs(ours_path), C.load_outputs(official_path)
    if set(ours) != set(official):
        return {"losses_equal_names": False}
    rel = max(float((ours[k] - official[k]).abs() / official[k].abs().clamp(min=1e-12)) for k in ours)
    return {"losses_equal_names": True, "first_step_losses_max_rel_diff": rel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_arguments(ap, DEFAULT_CONFIG)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--segments", type=int, default=20, help="ground-truth segments per image")
    ap.add_argument("--parts", action="store_true", help="time the model's parts (ours only)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="MODEL.DEVICE of both implementations (cuda: times synchronised, peak GPU "
                         "memory in the JSON line)")
    ap.add_argument("--precision", choices=("fp32", "amp"), default="fp32",
                    help="amp: float16 autocast and a gradient scaler, as detectron2's AMPTrainer "
                         "(SOLVER.AMP.ENABLED of the official configs; --device cuda only)")
    ap.add_argument("--huge-pages", choices=("ours", "both", "none"), default="none",
                    help="which implementation runs with THP_MEM_ALLOC_ENABLE=1 (PyTorch's huge-page "
                         "advice): ours, both, or none as the train_net.py scripts (default)")
    ap.set_defaults(iters=5)
    C.pass_through("--batch", "--segments", "--huge-pages", "--device", "--precision")
    args = ap.parse_args()
    if args.official and not args.save_outputs:
        C.compare_with_official(args, __file__, compare_losses)
    else:
        worker(args)


if __name__ == "__main__":
    main()
