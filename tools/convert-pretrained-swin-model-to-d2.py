#!/usr/bin/env python
"""Convert an official Swin Transformer ImageNet checkpoint (.pth) into a detectron2 .pkl.

    python tools/convert-pretrained-swin-model-to-d2.py \
        swin_tiny_patch4_window7_224.pth swin_tiny_patch4_window7_224.pkl

The input is a file of github.com/microsoft/Swin-Transformer (``{"model": state_dict}``). The output
holds the backbone tensors under ``backbone.`` (the names of ``D2SwinTransformer`` in MaskFormer),
without the classifier (``head.*``), the classifier's final ``norm.*`` and the ``attn_mask`` buffers
(D2SwinTransformer builds its shifted-window masks per input size). It is marked
``"matching_heuristics": True``: the per-stage output norms (``backbone.norm0``..``norm3``) and the
heads stay as initialised, as in the official MaskFormer training.
"""
import sys

from maskformer_d2.convert.backbones import convert_swin, main

if __name__ == "__main__":
    sys.exit(main(None, __doc__, convert_swin, author="third_party",
                  input_help="official Swin .pth ({'model': state_dict})"))
