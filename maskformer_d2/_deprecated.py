"""Old import paths that keep working for one release (0.2), with a DeprecationWarning.

A module that moved leaves a stub at its old path whose module-level ``__getattr__`` is made
here::

    __getattr__ = moved_names(__name__, "maskformer_d2.postprocessing", ["semantic_inference"])

README.md ("What moved in 0.2") lists every old path and its new home.
"""
import importlib
import warnings
from typing import Any, Callable, Iterable, Mapping, Union

__all__ = ["moved_names"]


def moved_names(
    old_module: str, new_module: str, names: Union[Iterable[str], Mapping[str, str]]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``names`` from their new home with a DeprecationWarning.

    Args:
        old_module: the stub's ``__name__``, for the message.
        new_module: where the names live now.
        names: the names served, or a mapping old name -> new place, where a new place is a name
            in ``new_module`` or ``"other.module:name"``.
    """
    places = dict(names) if isinstance(names, Mapping) else {n: n for n in names}

    def __getattr__(name: str) -> Any:
        if name not in places:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = places[name].rpartition(":")
        module = module or new_module
        warnings.warn(
            f"{old_module}.{name} moved to {module}.{new_name}; the old path goes away after 0.2",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
