"""Looking a part up by the name a config gives, with one readable error when it is unknown.

Each registry lives in the module that owns its parts (pixel decoders, transformer predictors,
dataset mappers; detectron2's own for meta-architectures, backbones and heads); this module only
holds the shared look-up and a registry whose entries may have names other than the class name.
"""
from typing import Any, Callable, TypeVar

from detectron2.utils.registry import Registry

__all__ = ["NamedRegistry", "lookup"]

_T = TypeVar("_T")


class NamedRegistry(Registry):
    """A detectron2 ``Registry`` that can also register an object under a name of its own
    (the official dataset mapper names, e.g. "mask_former_semantic", are not class names)."""

    def register_as(self, name: str) -> Callable[[_T], _T]:
        """Class decorator: register the class as ``name``."""

        def deco(obj: _T) -> _T:
            self._do_register(name, obj)
            return obj

        return deco


def lookup(registry: Registry, name: str, config_key: str, registry_name: str) -> Any:
    """``registry.get(name)``, or a KeyError naming ``config_key``, the known names and the fix.

    Args:
        registry: where to look.
        name: the name the config gives.
        config_key: the config key that gave it, e.g. "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME".
        registry_name: how users import the registry, e.g. "PIXEL_DECODER_REGISTRY".
    """
    if name not in registry:
        known = sorted(k for k, _ in registry)
        raise KeyError(
            f"{config_key}={name!r} is not registered in {registry_name}; registered: {known}. "
            f"Register another with @{registry_name}.register() and import its module before "
            "building."
        )
    return registry.get(name)
