"""The ``train_net.py`` command line: the config of a run, training or evaluation in each
process started by detectron2's ``launch``, and one-line errors.

    python train_net.py --config-file configs/shapes/maskformer_R18_shapes.yaml
    python train_net.py --config-file CFG --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CFG --eval-only --precision bf16 TEST.IMS_PER_BATCH 8 ...
    python train_net.py --config-file CFG --resume          # continue a stopped run
"""
import argparse
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Dict, List, Optional

import detectron2.utils.comm as comm
import torch
import torch.multiprocessing
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from ..checkpoint import MaskFormerCheckpointer, resume_candidates
from ..checkpoint.remote import is_url, resolve_url
from ..checkpoint.safe_load import UNSAFE_PICKLE_ENV, UNSAFE_PICKLE_FLAG, allow_unsafe_pickle
from ..config import REMOTE_CONFIG_ENV, REMOTE_CONFIG_FLAG, allow_remote_config, load_config, resolve_device
from ..data import prepare_shapes, register_shapes
from ..errors import first_line
from ..inference.precision import PRECISIONS
from .trainer import Trainer

__all__ = ["argument_parser", "build_cfg", "setup", "main", "cli"]

logger = logging.getLogger("maskformer_d2")


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """The config of a run: defaults + MaskFormer keys + the YAML + command-line overrides.

    A ``MODEL.WEIGHTS`` URL the downloader would refuse is refused here already, before any work.
    """
    opts = list(args.opts)
    if getattr(args, "precision", None):  # --precision is TEST.PRECISION
        opts += ["TEST.PRECISION", args.precision]
    cfg = resolve_device(load_config(args.config_file, opts, opts_name=f"config {args.config_file}"))
    if is_url(cfg.MODEL.WEIGHTS):
        resolve_url(cfg.MODEL.WEIGHTS, what="MODEL.WEIGHTS")
    register_shapes(cfg)  # DATASETS.SHAPES.* apply to the built-in dataset
    return cfg


def _uses_shapes(cfg: CfgNode) -> bool:
    return any(name.startswith("shapes_") for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config of a run, with detectron2's logging and output-folder set-up done."""
    cfg = build_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="maskformer_d2")
    return cfg


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus maskformer_d2's flags."""
    parser = default_argument_parser()
    parser.add_argument(
        UNSAFE_PICKLE_FLAG, dest="allow_unsafe_pickle", action="store_true",
        help=f"load checkpoints that hold arbitrary Python objects with full pickle, which can run "
             f"code from the file: only for files you trust (also: {UNSAFE_PICKLE_ENV}=1)")
    parser.add_argument(
        REMOTE_CONFIG_FLAG, dest="allow_remote_config", action="store_true",
        help=f"let a config's _BASE_ be an http(s) URL, downloaded into the cache: only for sources "
             f"you trust (also: {REMOTE_CONFIG_ENV}=1)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None,
        help="inference precision (TEST.PRECISION): fp32 (exact, the default) or bf16 (the network "
             "under autocast where the CPU/GPU has bf16 units; else fp32 with a warning)")
    return parser


def _share_cpu_cores(cfg: CfgNode) -> None:
    """Give each of several CPU processes on a machine its share of the cores (torch would give
    each all of them, and the processes would then fight over the cores)."""
    per_machine = comm.get_local_size()
    if per_machine <= 1 or cfg.MODEL.DEVICE != "cpu":
        return
    threads = max(1, (os.cpu_count() or 1) // per_machine)
    torch.set_num_threads(threads)
    if comm.get_local_rank() == 0:
        logger.info(f"{per_machine} CPU processes on this machine: {threads} threads each "
                    f"({os.cpu_count()} cores)")


def main(args: argparse.Namespace) -> Optional[Dict]:
    """Train (or, with ``--eval-only``, evaluate) in one process; returns the final evaluation."""
    cfg = setup(args)
    _share_cpu_cores(cfg)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        MaskFormerCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return trainer.eval_results


def _sigterm_as_interrupt_in(main_pid: int):
    """A SIGTERM handler that interrupts training like Ctrl-C in ``main_pid`` only, once: a forked
    worker (e.g. of the panoptic evaluator's pool, which is terminated at exit) inherits the
    handler, and there SIGTERM keeps its default meaning; a second SIGTERM (a scheduler signals
    every process of a job, and the launcher passes its own on) does not interrupt the
    checkpoint the first one is saving."""
    received = []

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if received:
            return
        received.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    return handler


#: the exit status of a launched process whose training was interrupted (as a shell reports SIGINT)
INTERRUPTED = 130


def _launched_main(args: argparse.Namespace, launcher_pid: int) -> Optional[Dict]:
    """:func:`main` in a process of ``launch``: in a process it started (several processes per
    machine or several machines), SIGTERM interrupts training as in the launcher, so rank 0
    saves ``model_interrupted.pth``, and the process exits with :data:`INTERRUPTED` (torch's
    launcher would report an interrupted process as a success)."""
    if os.getpid() == launcher_pid:  # one process: main runs in the launcher itself
        return main(args)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt_in(os.getpid()))
    try:
        return main(args)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


def _stop_launched_processes() -> None:
    """Pass an interruption on to the processes ``launch`` started (SIGTERM; one that already had
    one ignores it) and wait until they have saved their checkpoint and exited."""
    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(OSError):
            child.terminate()
    for child in children:
        child.join()


def _check_eval_only(args: argparse.Namespace, cfg: CfgNode) -> None:
    if args.eval_only and not cfg.MODEL.WEIGHTS and not (args.resume and resume_candidates(cfg.OUTPUT_DIR)):
        raise ValueError(
            "--eval-only needs weights: set MODEL.WEIGHTS (or use --resume with a checkpoint in "
            f"OUTPUT_DIR {cfg.OUTPUT_DIR})")


# how long a machine other than machine 0 waits for machine 0's interruption checkpoint to
# appear in the shared OUTPUT_DIR before saying there is none
OTHER_MACHINE_WAIT_S = 60.0


def _interrupted_message(cfg: Optional[CfgNode], wait_s: float = 0.0) -> str:
    """What to do next after an interruption. ``wait_s``: on a machine other than machine 0,
    rank 0 saves ``model_interrupted.pth`` in another process tree, possibly after this machine's
    processes have exited: wait up to that long for a checkpoint to appear."""
    found = resume_candidates(cfg.OUTPUT_DIR) if cfg is not None else []
    deadline = time.monotonic() + wait_s
    while cfg is not None and not found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = resume_candidates(cfg.OUTPUT_DIR)
    if not found:
        return "train_net: interrupted before any checkpoint was written; start again (no --resume needed)"
    return f"train_net: interrupted; the last checkpoint is {found[0]}, continue with --resume"


def cli(argv: Optional[List[str]] = None) -> int:
    """``train_net.py``: parse ``argv``, launch :func:`main` in every process; the exit status."""
    args = argument_parser().parse_args(argv)
    if args.allow_unsafe_pickle:
        allow_unsafe_pickle()  # the environment carries it to the processes launch() starts
    if args.allow_remote_config:
        allow_remote_config()  # likewise
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt_in(os.getpid()))
    cfg = None
    try:
        cfg = build_cfg(args)  # fails early, once, on a bad config
        _check_eval_only(args, cfg)
        if _uses_shapes(cfg):
            prepare_shapes(cfg)  # once, before worker processes start
        launch(_launched_main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args, os.getpid()))
    except (KeyboardInterrupt, ProcessExitedException) as e:
        if isinstance(e, ProcessExitedException) and e.exit_code != INTERRUPTED:
            print(f"train_net: error: {first_line(e)}", file=sys.stderr)
            return 1
        _stop_launched_processes()
        print(_interrupted_message(cfg, OTHER_MACHINE_WAIT_S if args.machine_rank > 0 else 0.0), file=sys.stderr)
        return INTERRUPTED
    except (OSError, ValueError, KeyError, AssertionError, NotImplementedError) as e:  # d2 asserts on bad data
        if os.environ.get("MASKFORMER_D2_DEBUG"):
            raise
        print(f"train_net: error: {first_line(e) or type(e).__name__}", file=sys.stderr)
        return 1
    except torch.multiprocessing.ProcessRaisedException as e:  # an error in a launched process
        if os.environ.get("MASKFORMER_D2_DEBUG"):
            raise
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        print(f"train_net: error: {lines[-1] if lines else type(e).__name__}", file=sys.stderr)
        return 1
    return 0
