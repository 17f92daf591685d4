#!/usr/bin/env python
"""Train and evaluate MaskFormer with detectron2's trainer, evaluators and ``launch``.

    python train_net.py --config-file configs/shapes/maskformer_R18_shapes.yaml
    python train_net.py --config-file CFG --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CFG --resume          # continue a stopped run
"""
import logging
import os
import signal
import sys
import weakref
from collections import OrderedDict

import torch

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
from detectron2.config import CfgNode, get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from maskformer_d2 import add_maskformer_config
from maskformer_d2.checkpoint import MaskFormerCheckpointer
from maskformer_d2.data import build_mapper, prepare_shapes, register_shapes
from maskformer_d2.evaluation import build_evaluators
from maskformer_d2.solver import build_lr_scheduler, build_optimizer
from maskformer_d2.test_time_augmentation import SemanticSegmentorWithTTA

logger = logging.getLogger("maskformer_d2")


def _create_ddp_model(model, **kwargs):
    """d2's create_ddp_model, but with ``device_ids=None`` for CPU models (gloo on CPU)."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


_d2_create_ddp_model = d2_defaults.create_ddp_model
d2_defaults.create_ddp_model = _create_ddp_model  # upstream always passes a GPU id


class SaveOnInterrupt(HookBase):
    """Saves a checkpoint when training stops early (Ctrl-C, SIGTERM), so ``--resume`` loses nothing."""

    def after_train(self):
        t = self.trainer
        if t.iter < t.max_iter and t.iter > t.start_iter and comm.is_main_process():
            # iterations before t.iter are complete (t.iter was interrupted); the trainer's own
            # state records t.iter too, so step it back: --resume restarts at t.iter
            interrupted = t.iter
            t.iter -= 1
            t.checkpointer.save("model_interrupted", iteration=t.iter)
            logger.warning(f"training stopped in iteration {interrupted}: saved model_interrupted.pth; use --resume")


class Trainer(DefaultTrainer):
    """DefaultTrainer with MaskFormer's mappers, evaluators, optimiser and LR schedule."""

    def build_hooks(self):
        # DefaultTrainer.__init__ calls this right after making its DetectionCheckpointer: swap in
        # ours (clear errors on checkpoints that do not fit) before the hooks capture it
        self.checkpointer = MaskFormerCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks() + [SaveOnInterrupt()]

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)  # WarmupPolyLR (config wins on resume), or d2's

    @classmethod
    def test_with_TTA(cls, cfg, model):
        logger.info("Running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
                      for name in cfg.DATASETS.TEST]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})


def build_cfg(args) -> CfgNode:
    """The config of a run: defaults + MaskFormer keys + the YAML + command-line overrides."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError) as e:  # yacs: unknown key (KeyError / AssertionError)
        raise ValueError(f"config {args.config_file}: {e.args[0] if e.args else e}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but no GPU is available: running on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    register_shapes(cfg)  # DATASETS.SHAPES.* apply to the built-in dataset
    return cfg


def _uses_shapes(cfg: CfgNode) -> bool:
    return any(name.startswith("shapes_") for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)


def setup(args) -> CfgNode:
    cfg = build_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="maskformer_d2")
    return cfg


def main(args):
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
    # d2 returns the final evaluation only when TEST.EXPECTED_RESULTS is set; return it always
    return getattr(trainer, "_last_eval_results", None)


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cli(argv=None) -> int:
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


if __name__ == "__main__":
    sys.exit(cli())
