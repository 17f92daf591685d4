"""Configuration: every config key maskformer_d2 reads (:func:`add_maskformer_config`) and the one
reader of config files (:func:`load_config`), which treats a file as untrusted input."""
from .defaults import add_maskformer_config, resolve_device
from .expressions import MAX_EXPRESSION_STEPS, evaluate_list_expression
from .loading import (
    MAX_CONFIG_BYTES,
    REMOTE_CONFIG_ENV,
    REMOTE_CONFIG_FLAG,
    allow_remote_config,
    load_config,
    remote_config_allowed,
)

__all__ = [
    "add_maskformer_config", "resolve_device", "load_config", "evaluate_list_expression",
    "MAX_CONFIG_BYTES", "MAX_EXPRESSION_STEPS", "REMOTE_CONFIG_ENV", "REMOTE_CONFIG_FLAG",
    "allow_remote_config", "remote_config_allowed",
]
