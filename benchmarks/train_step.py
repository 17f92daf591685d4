#!/usr/bin/env python
"""Times one training step of a config, split by part (data, backbone, pixel decoder, predictor,
criterion, backward, optimizer), on the machine it runs on. Prints numbers; asserts nothing.

    python benchmarks/train_step.py [--config-file configs/shapes/maskformer_R18_shapes.yaml]
                                    [--iters 20] [--threads N] [KEY VALUE ...]
"""
import argparse
import os
import statistics
import time
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", default=os.path.join(REPO, "configs/shapes/maskformer_R18_shapes.yaml"))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    args = ap.parse_args()

    import torch
    from detectron2.engine import default_argument_parser

    from maskformer_d2.engine import Trainer, build_cfg

    if args.threads:
        torch.set_num_threads(args.threads)
    targs = default_argument_parser().parse_args(["--config-file", args.config_file, *args.opts])
    cfg = build_cfg(targs)
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))

    times = defaultdict(list)

    def timed(module, name):
        def pre(m, inp):
            m._t0 = time.perf_counter()

        def post(m, inp, out):
            times[name].append(time.perf_counter() - m._t0)
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def timed_method(obj, method, name):  # the heads call pixel_decoder.forward_features
        inner = getattr(obj, method)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            times[name].append(time.perf_counter() - t0)
            return out
        setattr(obj, method, wrapper)

    timed(model.backbone, "fwd backbone")
    head = model.sem_seg_head
    timed_method(head.pixel_decoder, "forward_features", "fwd pixel decoder")
    timed(head.predictor, "fwd transformer predictor")
    timed(model.criterion, "fwd criterion (+matcher)")
    if hasattr(model.criterion, "matcher"):
        timed(model.criterion.matcher, "matcher (part of criterion)")

    for it in range(args.warmup + args.iters):
        if it == args.warmup:
            times.clear()
        t0 = time.perf_counter()
        data = next(loader)
        t1 = time.perf_counter()
        losses = model(data)
        loss = sum(losses.values())
        t2 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        times["data wait"].append(t1 - t0)
        times["forward total"].append(t2 - t1)
        times["backward"].append(t3 - t2)
        times["optimizer step"].append(t4 - t3)
        times["STEP"].append(t4 - t0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.iters} iterations")
    for name, v in times.items():
        print(f"{name:32s} {1000 * statistics.median(v):8.1f} ms (median)  {1000 * statistics.mean(v):8.1f} ms (mean)")


if __name__ == "__main__":
    main()
