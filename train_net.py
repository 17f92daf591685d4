#!/usr/bin/env python
"""Train and evaluate MaskFormer with detectron2's trainer, evaluators and ``launch``.

    python train_net.py --config-file configs/shapes/maskformer_R18_shapes.yaml
    python train_net.py --config-file CFG --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CFG --resume          # continue a stopped run

Everything happens in :mod:`maskformer_d2.engine` (``Trainer``, ``cli``); import that, not this
script, to extend it.
"""
import sys

if __name__ == "__main__":
    try:
        from maskformer_d2.engine import cli
    except ImportError as e:  # maskformer_d2.errors.MissingDependencyError says how to install
        sys.exit(f"train_net: error: {e}")
    sys.exit(cli())
