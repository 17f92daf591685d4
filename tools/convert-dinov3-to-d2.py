#!/usr/bin/env python
"""Convert DINOv3 ViT weights into the ViT checkpoint a DINOv3 EoMT config fine-tunes from.

    python tools/convert-dinov3-to-d2.py model.safetensors dinov3_vitl.safetensors \\
        --config-file configs/eomt/dinov3/coco/panoptic/eomt_large_640.yaml
    python train_net.py --config-file configs/eomt/dinov3/coco/panoptic/eomt_large_640.yaml \\
        MODEL.WEIGHTS dinov3_vitl.safetensors MODEL.EOMT.DELTA_WEIGHTS False

INPUT is transformers' DINOv3 file of the config's MODEL.EOMT.BACKBONE_NAME (``model.safetensors``
of ``facebook/dinov3-vitl16-pretrain-lvd1689m``; a ``.pth`` with the same names works too), read
without unpickling code. The tensors are renamed only (DINOv3 has patch 16 and rotary positions).
To evaluate the official DINOv3 EoMT checkpoints (deltas) this is not needed: give the DINOv3
file as MODEL.EOMT.BACKBONE_WEIGHTS instead.
"""
import sys

if __name__ == "__main__":
    from maskformer_d2.convert.dinov2 import main
    sys.exit(main(None, __doc__))
