"""TransformerLens across its two supported lines, in one place.

* **3.9** ships ``HookedTransformer`` and ``TransformerBridge``;
* **4.x** removed ``HookedTransformer``, ``HookedTransformerConfig``, ``components``,
  ``loading`` / ``loading_from_pretrained`` and ``utils``; ``TransformerBridge``
  (``transformer_lens.model_bridge``), ``HookPoint`` and ``TransformerLensKeyValueCache`` stay.

Everything of the 3.x-only API that steerlens uses goes through this module: the version is
read from the installed distribution's metadata (TransformerLens itself is not imported), and a
3.x-only name asked for on 4.x raises ``HookedUnavailableError`` naming the installed version
and the way forward (the bridge), never an ``ImportError`` from deep inside a call.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata
from typing import Any

__all__ = [
    "HookedUnavailableError",
    "has_hooked_transformer",
    "hooked_transformer_class",
    "hooked_transformer_config",
    "official_model_name",
    "tl_version",
]


class HookedUnavailableError(RuntimeError):
    """``backend="hooked"`` asked for on a TransformerLens without ``HookedTransformer``."""


@cache
def tl_version() -> str:
    """The installed TransformerLens version (from its metadata; nothing is imported)."""
    try:
        return metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:  # pragma: no cover - a hard dependency
        return "0"


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens has ``HookedTransformer`` (the 3.x line)."""
    return _major(tl_version()) < 4


def _refuse(what: str) -> HookedUnavailableError:
    return HookedUnavailableError(
        f"{what} needs TransformerLens's HookedTransformer, which TransformerLens 4.0 removed; "
        f"transformer-lens {tl_version()} is installed. Use backend='bridge' (the default: a "
        "TransformerBridge in compatibility mode, with HookedTransformer's hook names and "
        "numerics), or install 'transformer-lens>=3.9,<4' for backend='hooked'."
    )


def _hooked_api(name: str, what: str) -> Any:
    """``transformer_lens.<name>`` (a 3.x-only class), or ``HookedUnavailableError`` on 4.x."""
    if not has_hooked_transformer():
        raise _refuse(what)
    import transformer_lens

    return getattr(transformer_lens, name)


def hooked_transformer_class(what: str = "backend='hooked'") -> Any:
    """``transformer_lens.HookedTransformer``, or ``HookedUnavailableError`` on 4.x."""
    return _hooked_api("HookedTransformer", what)


def hooked_transformer_config(what: str = "backend='hooked'") -> Any:
    """``transformer_lens.HookedTransformerConfig``, or ``HookedUnavailableError`` on 4.x."""
    return _hooked_api("HookedTransformerConfig", what)


def official_model_name(name: str) -> str | None:
    """TransformerLens's official name for ``name`` (aliases resolved), or None where it has
    none; 3.x only (``loading_from_pretrained``), None on 4.x."""
    if not has_hooked_transformer():
        return None
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return str(get_official_model_name(name))
    except ValueError:
        return None
