#!/usr/bin/env python
"""Convert DINOv2 weights into the ViT checkpoint an EoMT config fine-tunes from.

    python tools/convert-dinov2-to-d2.py model.safetensors dinov2_vitl_640.safetensors \\
        --config-file configs/eomt/dinov2/coco/panoptic/eomt_large_640.yaml
    python train_net.py --config-file configs/eomt/dinov2/coco/panoptic/eomt_large_640.yaml \\
        MODEL.WEIGHTS dinov2_vitl_640.safetensors

INPUT is timm's DINOv2 file of the config's architecture (``model.safetensors`` of the hub model
``timm/<MODEL.EOMT.BACKBONE_NAME>.lvd142m``; a ``.pth`` with the same names works too); it is
read without unpickling code. The patch-14 embedding and the position embedding are resampled to
the config's patch size and image size as timm does when the official EoMT code loads DINOv2
(``pretrained=True``).
"""
import sys

if __name__ == "__main__":
    from maskformer_d2.convert.dinov2 import main
    sys.exit(main(None, __doc__))
