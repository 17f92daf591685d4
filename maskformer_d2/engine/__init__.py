"""Training and evaluation on detectron2's engine: the trainer, the optimiser recipe, test-time
augmentation and the ``train_net.py`` command line."""
from .command import argument_parser, build_cfg, cli, main, setup
from .solver import WarmupPolyLR, build_lr_scheduler, build_optimizer, param_groups
from .trainer import SaveOnInterrupt, Trainer
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "Trainer",
    "SaveOnInterrupt",
    "build_cfg",
    "setup",
    "main",
    "cli",
    "argument_parser",
    "build_optimizer",
    "build_lr_scheduler",
    "param_groups",
    "WarmupPolyLR",
    "SemanticSegmentorWithTTA",
]
