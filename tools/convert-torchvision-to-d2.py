#!/usr/bin/env python
"""Convert a torchvision ResNet state dict (.pth) into a detectron2 backbone checkpoint (.pkl).

    python tools/convert-torchvision-to-d2.py resnet50-0676ba61.pth R-50.pkl

The output uses detectron2's ResNet names (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``)
and is marked ``"__author__": "torchvision", "matching_heuristics": True``, so ``MODEL.WEIGHTS R-50.pkl``
loads it into the backbone of any model (the heads stay as initialised). Use it with
``MODEL.RESNETS.STRIDE_IN_1X1 False`` (torchvision strides in the 3x3 conv) and
``MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]``, ``PIXEL_STD [58.395, 57.120, 57.375]``, RGB input.
"""
import sys

from maskformer_d2.convert.backbones import convert_torchvision_resnet, main

if __name__ == "__main__":
    sys.exit(main(None, __doc__, convert_torchvision_resnet, author="torchvision",
                  input_help="torchvision ResNet .pth (a state dict)"))
