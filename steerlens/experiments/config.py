"""The sections every job config shares, and loading a config from a file.

``RunSection`` (seed, device, batch size) and ``MethodOptions`` (rank, C, shrink of the
pair-table methods) are nested in each job's config (``run:`` and ``options:`` in a YAML or
JSON file) instead of copied into it. Files written before the sections existed, with the
six keys at the top level, still load: each such key is moved into its section with a
``DeprecationWarning`` (``load_config``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = ["FLAT_KEYS", "RunSection", "as_section", "config_from_dict", "load_config"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RunSection:
    """Seed, device and batch sizes of a job (frozen: configs may share one).

    ``batch_size`` caps the rows of a forward pass over whole texts (scoring, caching, KL;
    these also pack by a token budget); ``generation_batch_size`` the rows that decode
    together. A decoding step reads every weight once whatever the rows, so on a CPU one
    step of 64 rows costs about twice one of 16 (and 64 rows 0.23 s a row for 24 new tokens
    against 0.33 s at 16, embedded model, 2 cores; ``CHANGELOG.md``)."""

    seed: int = 0
    device: str | None = None  # "cpu", "cuda", "cuda:1", ...; None: CUDA when available
    batch_size: int = 16  # rows a batch; prefill work also packs by a token budget
    generation_batch_size: int = 64  # rows a generation batch decodes together

    def __post_init__(self) -> None:
        if min(self.batch_size, self.generation_batch_size) < 1:
            raise ValueError(
                "batch_size and generation_batch_size must be >= 1, got "
                f"{self.batch_size} and {self.generation_batch_size}"
            )
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device {self.device!r}: {e}") from None


FLAT_KEYS = {
    "seed": "run",
    "device": "run",
    "batch_size": "run",
    "rank": "options",
    "C": "options",
    "shrink": "options",
}
"""The deprecated top-level keys, and the section each now lives in."""


def as_section(value: Any, cls: type[T]) -> T:
    """A section given as a mapping (a loaded file) as its dataclass; a dataclass as is."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")


def config_from_dict(cls: type[T], raw: Mapping[str, Any], source: str = "config") -> T:
    """``cls`` from a mapping of options: the sections as mappings, unknown keys an error, the
    deprecated flat keys (``FLAT_KEYS``) moved into their section with a warning."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    opts = dict(raw)
    moved = [k for k in FLAT_KEYS if k in opts and k not in names and FLAT_KEYS[k] in names]
    if moved:
        where = ", ".join(f"{FLAT_KEYS[k]}.{k}" for k in moved)
        msg = (
            f"{source}: top-level {', '.join(moved)} are deprecated; "
            f"write them in their sections ({where})"
        )
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        logger.warning(msg)
        for key in moved:
            section = opts.setdefault(FLAT_KEYS[key], {})
            if not isinstance(section, Mapping):  # a dataclass given in code
                section = vars(section)
            if key in section:
                raise ValueError(
                    f"{source}: {key} is given both at the top level and in {FLAT_KEYS[key]}"
                )
            opts[FLAT_KEYS[key]] = {**section, key: opts.pop(key)}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise ValueError(f"{source}: unknown options {unknown}")
    return cls(**opts)


def load_config(cls: type[T], path: str | Path) -> T:
    """``cls`` from a ``.json``, ``.yaml`` or ``.yml`` file (see ``config_from_dict``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text) or {}
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config is a mapping of options")
    return config_from_dict(cls, raw, source=str(path))
