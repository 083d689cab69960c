"""Resuming a study: which of its steps are finished with the same inputs.

Each step declares what it reads (``StepInputs``: config fields, dotted for sections, and the
earlier steps whose results it uses). Its *fingerprint* hashes those fields' values, the
fields every step reads (``GLOBAL_READS``), the package version and the fingerprints of the
steps it needs, so a changed field changes the fingerprint of the steps that read it and of
every step after them that needs them, and of no other. ``results/steps.json`` records, per
finished step, its fingerprint, the summary keys it wrote and the files it wrote; a step whose
entry is done, whose fingerprint matches and whose files are all still there is not rerun.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GLOBAL_READS",
    "SHARED_FILES",
    "StepInputs",
    "field_value",
    "fingerprints",
    "finished",
    "snapshot",
    "written_since",
]

GLOBAL_READS = ("model", "data", "run.seed", "run.batch_size")
"""Config fields every step's numbers depend on."""
SHARED_FILES = frozenset({"summary.json", "steps.json", "splits.json"})
"""Files under ``results/`` every step updates: never one step's own."""


@dataclass(frozen=True)
class StepInputs:
    """What a step reads: config fields (``"run.seed"`` for a section's field) and the earlier
    steps whose results it uses."""

    reads: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


def field_value(config: Mapping[str, Any], dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"`` (``asdict`` of a config); a ``KeyError`` names it."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"the config has no field {dotted!r}")
        value = value[part]
    return value


def fingerprints(
    config: Mapping[str, Any],
    inputs: Mapping[str, StepInputs],
    order: Sequence[str],
    version: str,
) -> dict[str, str]:
    """Per step (in ``order``, each after the steps it needs), the hash of its inputs."""
    out: dict[str, str] = {}
    for name in order:
        spec = inputs[name]
        missing = [n for n in spec.needs if n not in out]
        if missing:
            raise ValueError(f"step {name!r} needs {missing}, which do not come before it")
        payload = {
            "version": version,
            "reads": {f: field_value(config, f) for f in (*GLOBAL_READS, *spec.reads)},
            "needs": {n: out[n] for n in spec.needs},
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        out[name] = hashlib.sha1(text.encode()).hexdigest()[:12]
    return out


def finished(entry: Mapping[str, Any] | None, fingerprint: str, results: Path) -> bool:
    """Whether a ``steps.json`` entry is a finished run of these inputs whose files are all
    still under ``results``."""
    if not entry or entry.get("status") != "done" or entry.get("fingerprint") != fingerprint:
        return False
    return all((results / f).exists() for f in entry.get("files", []))


def snapshot(results: Path) -> dict[str, float]:
    """The modification time of each file directly under ``results`` (a step's own files)."""
    return {p.name: p.stat().st_mtime for p in results.iterdir() if p.is_file()}


def written_since(results: Path, before: Mapping[str, float]) -> list[str]:
    """The files under ``results`` new or changed since ``before`` (``snapshot``), but the
    shared ones."""
    now = snapshot(results)
    return sorted(
        name for name, t in now.items() if name not in SHARED_FILES and before.get(name) != t
    )
