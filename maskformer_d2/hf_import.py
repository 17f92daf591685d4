"""Moved to :mod:`maskformer_d2.convert.hf`; this path keeps working until after 0.2, with a DeprecationWarning."""
from ._deprecated import moved_names

__getattr__ = moved_names(
    __name__,
    "maskformer_d2.convert.hf",
    ["convert_state_dict", "config_from_hf", "config_overrides", "import_hf_maskformer", "HFImportError"],
)
