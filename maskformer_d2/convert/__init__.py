"""Weight converters: checkpoints of other code bases -> maskformer_d2 / detectron2 checkpoints.

* :mod:`.hf`: a Hugging Face ``transformers`` MaskFormer (Swin or ResNet backbone) -> weights and
  config (:func:`import_hf_maskformer`; CLI tools/convert-hf-maskformer-to-d2.py), and what both
  HF importers share (backbone renaming, config checks, output files, command line);
* :mod:`.hf_mask2former`: the same for a HF Mask2Former (:func:`import_hf_mask2former`; CLI
  tools/convert-hf-mask2former-to-d2.py), whose tensors get the official Mask2Former names;
* :mod:`.hf_folder`: how both read a HF model folder without trusting it (JSON fields checked
  against tables, no custom code, weights without pickle, sizes before allocating);
* :mod:`.backbones`: ImageNet backbones -> detectron2 backbone ``.pkl`` files: torchvision ResNet
  (:func:`convert_torchvision_resnet`; CLI tools/convert-torchvision-to-d2.py) and official Swin
  Transformer (:func:`convert_swin`; CLI tools/convert-pretrained-swin-model-to-d2.py);
* :mod:`.dinov2`: DINOv2 ViT weights -> the EoMT backbone checkpoint a fine-tuning starts from
  (:func:`~.dinov2.convert_dinov2`; CLI tools/convert-dinov2-to-d2.py);
* :mod:`.files`: what the converters read and write (:func:`read_state_dict`,
  :func:`write_d2_checkpoint`, :func:`rename_keys`).
"""
from .backbones import convert_swin, convert_torchvision_resnet
from .files import StateDict, read_state_dict, rename_keys, write_d2_checkpoint
from .hf import HFImportError, config_from_hf, convert_state_dict, import_hf_maskformer
from .hf_mask2former import import_hf_mask2former

__all__ = [
    "HFImportError",
    "config_from_hf",
    "convert_state_dict",
    "import_hf_maskformer",
    "import_hf_mask2former",
    "convert_swin",
    "convert_torchvision_resnet",
    "StateDict",
    "read_state_dict",
    "rename_keys",
    "write_d2_checkpoint",
]
