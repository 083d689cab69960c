"""Lazy package namespaces (PEP 562): a package names its public objects and the modules that
define them, and each is imported on first access, so ``import steerlens`` and
``steerlens --help`` do not pay for torch, transformers and TransformerLens."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose public name may equal a submodule's (``methods.bipo``, the function in
    ``methods/bipo.py``): when the import system binds the submodule on the package, the
    public object is bound instead, as an eager ``from .bipo import bipo`` would leave it."""

    def __setattr__(self, name: str, value: Any) -> None:
        names = self.__dict__.get("_lazy_names", {})
        if isinstance(value, types.ModuleType) and names.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_namespace(
    package: str,
    names: Mapping[str, str],
    namespace: dict[str, Any],
    modules: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps each public name to the
    module defining it, ``modules`` each public submodule name to its module. The value is
    cached in ``namespace`` (the package's globals) after the first access."""
    submodules = dict(modules or {})
    namespace["_lazy_names"] = dict(names)
    sys.modules[package].__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        if name in submodules:
            value = importlib.import_module(submodules[name])
        elif name in names:
            value = getattr(importlib.import_module(names[name]), name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}"):
            value = importlib.import_module(f"{package}.{name}")  # any other submodule
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names) | set(submodules))

    return __getattr__, __dir__
