"""Weight converters: checkpoints of other code bases -> maskformer_d2 / detectron2 checkpoints.

* :mod:`.hf`: a Hugging Face ``transformers`` MaskFormer (Swin or ResNet backbone) -> weights and
  config (:func:`import_hf_maskformer`; CLI tools/convert-hf-maskformer-to-d2.py);
* :mod:`.backbones`: ImageNet backbones -> detectron2 backbone ``.pkl`` files: torchvision ResNet
  (:func:`convert_torchvision_resnet`; CLI tools/convert-torchvision-to-d2.py) and official Swin
  Transformer (:func:`convert_swin`; CLI tools/convert-pretrained-swin-model-to-d2.py);
* :mod:`.files`: what the converters read and write (:func:`read_state_dict`,
  :func:`write_d2_checkpoint`, :func:`rename_keys`).
"""
from .backbones import convert_swin, convert_torchvision_resnet
from .files import StateDict, read_state_dict, rename_keys, write_d2_checkpoint
from .hf import HFImportError, config_from_hf, convert_state_dict, import_hf_maskformer

__all__ = [
    "HFImportError",
    "config_from_hf",
    "convert_state_dict",
    "import_hf_maskformer",
    "convert_swin",
    "convert_torchvision_resnet",
    "StateDict",
    "read_state_dict",
    "rename_keys",
    "write_d2_checkpoint",
]
