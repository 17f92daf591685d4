"""detectron2's ``DefaultTrainer`` with MaskFormer's data, evaluators, optimiser and schedule,
plus what a long run needs: a checkpoint when it is interrupted, the final evaluation kept for the
caller, and DistributedDataParallel on CPU processes."""
import contextlib
import logging
import os
import random
import weakref
from collections import OrderedDict
from typing import Dict, Iterator, Optional

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, hooks

from ..checkpoint import MaskFormerCheckpointer
from ..data.mappers import build_mapper
from ..evaluation import build_evaluators
from .figures import TrainingFigures, draw_evaluation
from .solver import build_lr_scheduler, build_optimizer
from .tta import SemanticSegmentorWithTTA

__all__ = ["Trainer", "SaveOnInterrupt", "random_state_kept"]

logger = logging.getLogger("maskformer_d2")


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


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Restore Python's, numpy's and torch's (CPU and CUDA) random states on exit.

    Around a periodic evaluation: its data loader draws its workers' seed from torch's generator,
    which would shift every random draw of the rest of training (dropout, point sampling, the
    mapper's augmentation), so a run evaluated every N iterations would train a different model
    than the same run without (the shapes quickstart moved by 3 mIoU). With it, evaluating
    changes nothing of training.
    """
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


@contextlib.contextmanager
def _ddp_without_device_ids_on_cpu() -> Iterator[None]:
    """While ``DefaultTrainer.__init__`` runs, wrap CPU models in DDP with ``device_ids=None``.

    detectron2's ``create_ddp_model`` always passes a GPU id, which DistributedDataParallel
    rejects for a CPU model (gloo); nothing else changes, and the original is restored after.
    """
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """DefaultTrainer with MaskFormer's mappers, evaluators, optimiser and LR schedule.

    ``eval_results`` holds the last evaluation of training (the final one after ``train()``).
    """

    def __init__(self, cfg: CfgNode):
        self.eval_results: Optional[Dict] = None
        with _ddp_without_device_ids_on_cpu():
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ calls this right after making its DetectionCheckpointer: swap in
        # ours (clear errors on checkpoints that do not fit) before the hooks capture it
        self.checkpointer = MaskFormerCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR,
                                                   trainer=weakref.proxy(self))
        built = super().build_hooks()
        # d2's evaluation hook keeps its results in a private attribute: use one that keeps them here
        built = [
            hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate) if isinstance(h, hooks.EvalHook) else h
            for h in built
        ]
        built.append(SaveOnInterrupt())
        if comm.is_main_process():  # after the PeriodicWriter: metrics.json holds each evaluation
            built.append(TrainingFigures(self.cfg.OUTPUT_DIR, self.cfg.TEST.EVAL_PERIOD))
        return built

    def _evaluate(self) -> Dict:
        with random_state_kept():  # evaluating during training leaves training as it was
            self.eval_results = self.test(self.cfg, self.model)
        return self.eval_results

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, then the per-class chart of its results in ``OUTPUT_DIR``
        (``per_class.png``; see :mod:`maskformer_d2.engine.figures`) when the evaluators are the
        config's own (not those of test-time augmentation, which would overwrite it)."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results and evaluators is None:
            try:
                draw_evaluation(results, cfg.OUTPUT_DIR, ", ".join(cfg.DATASETS.TEST))
            except (OSError, ValueError) as e:
                logger.warning(f"could not draw the per-class chart in {cfg.OUTPUT_DIR}: {e}")
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with ``TEST.IMS_PER_BATCH`` images per batch."""
        return build_detection_test_loader(cfg, dataset_name, batch_size=cfg.TEST.IMS_PER_BATCH)

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
