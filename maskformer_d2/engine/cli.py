"""The ``train_net.py`` command line: the config of a run, training or evaluation in each
process started by detectron2's ``launch``, and one-line errors.

    python train_net.py --config-file configs/shapes/maskformer_R18_shapes.yaml
    python train_net.py --config-file CFG --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CFG --resume          # continue a stopped run
"""
import argparse
import logging
import os
import signal
import sys
from typing import Dict, List, Optional

import detectron2.utils.comm as comm
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from ..checkpoint import MaskFormerCheckpointer
from ..config import add_maskformer_config, resolve_device
from ..data import prepare_shapes, register_shapes
from .trainer import Trainer

__all__ = ["build_cfg", "setup", "main", "cli"]

logger = logging.getLogger("maskformer_d2")


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """The config of a run: defaults + MaskFormer keys + the YAML + command-line overrides."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError) as e:  # yacs: unknown key (KeyError / AssertionError)
        raise ValueError(f"config {args.config_file}: {e.args[0] if e.args else e}") from None
    cfg = resolve_device(cfg)
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


def main(args: argparse.Namespace) -> Optional[Dict]:
    """Train (or, with ``--eval-only``, evaluate) in one process; returns the final evaluation."""
    cfg = setup(args)
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


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cli(argv: Optional[List[str]] = None) -> int:
    """``train_net.py``: parse ``argv``, launch :func:`main` in every process; the exit status."""
    args = default_argument_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        cfg = build_cfg(args)  # fails early, once, on a bad config
        if _uses_shapes(cfg):
            prepare_shapes(cfg)  # once, before worker processes start
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except KeyboardInterrupt:
        print("train_net: interrupted; the last checkpoint is in OUTPUT_DIR, continue with --resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, AssertionError) as e:  # d2 asserts on bad data
        if os.environ.get("MASKFORMER_D2_DEBUG"):
            raise
        print(f"train_net: error: {e}", file=sys.stderr)
        return 1
    return 0
