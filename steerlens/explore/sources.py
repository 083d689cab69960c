"""What the explorer opens: a study's (or sweep's) results folder and a folder of vectors.

``Sources`` finds the vectors (``results/vectors/population.safetensors``,
``results/vectors/<method>/<user>.safetensors``, any ``*.safetensors`` / ``*.gguf`` under
``--vectors``), the held-out prompts and their users (``results/prompts.jsonl``), the fitted
condition (``results/vectors/conditions/``), a sweep's cells and the simulated set's true
weights. It reads files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from steerlens.core.conditions import Condition
from steerlens.core.vectors import SteeringVector
from steerlens.data.prism import DEMO_DIR

__all__ = ["Sources", "results_folder"]

_SUFFIXES = (".safetensors", ".gguf")


def results_folder(run: str | Path) -> Path:
    """A study's folder (holding ``results/``) or its ``results/`` folder, as ``steerlens
    report --run`` takes it; a sweep's folder (holding ``cells.parquet``) is itself."""
    p = Path(run).expanduser()
    if not p.is_dir():
        raise ValueError(f"--run {run}: no such folder")
    return p / "results" if (p / "results").is_dir() else p


@dataclass
class Sources:
    """The files the explorer can show (each optional)."""

    run: Path | None = None
    vectors_dir: Path | None = None
    _loaded: dict[str, SteeringVector] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.run is not None:
            self.run = results_folder(self.run)
        if self.vectors_dir is not None:
            self.vectors_dir = Path(self.vectors_dir).expanduser()
            if not self.vectors_dir.is_dir():
                raise ValueError(f"--vectors {self.vectors_dir}: no such folder")

    # vectors ------------------------------------------------------------------------------
    @cached_property
    def vectors(self) -> dict[str, Path]:
        """Key -> file: ``population``, ``<method>/<user>`` from the run; file stems (with
        their sub-folder) from ``--vectors``. Conditions are not vectors."""
        found: dict[str, Path] = {}
        roots = [self.run / "vectors"] if self.run is not None else []
        roots += [self.vectors_dir] if self.vectors_dir is not None else []
        for root in roots:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if path.suffix in _SUFFIXES and rel.parts[0] != "conditions":
                    found.setdefault(rel.with_suffix("").as_posix(), path)
        return found

    def vector_keys(self, user: str | None = None) -> list[str]:
        """Every key, this user's own first."""
        keys = list(self.vectors)
        if user is None:
            return keys
        mine = [k for k in keys if k.rsplit("/", 1)[-1] == user]
        return mine + [k for k in keys if k not in mine]

    def load_vector(self, key: str) -> SteeringVector:
        """A vector by key or by file path (``.safetensors`` or ``.gguf``)."""
        if key in self._loaded:
            return self._loaded[key]
        path = self.vectors.get(key)
        if path is None:
            path = Path(key).expanduser()
            if path.suffix not in _SUFFIXES:
                known = ", ".join(list(self.vectors)[:6]) or "none in this run"
                raise ValueError(
                    f"vector {key!r}: not a vector of this run ({known}) nor a "
                    ".safetensors / .gguf file"
                )
            if not path.is_file():
                raise ValueError(f"vector file {key!r}: no such file")
        try:
            vec = (
                SteeringVector.from_gguf(path)
                if path.suffix == ".gguf"
                else SteeringVector.load(path)
            )
        except Exception as e:  # a damaged or foreign file: a message, not a traceback
            raise ValueError(f"vector {key!r} could not be read: {e}") from None
        self._loaded[key] = vec
        return vec

    def condition(self) -> Condition | None:
        """The run's fitted condition (``vectors/conditions/*.safetensors``), if any."""
        if self.run is None:
            return None
        files = sorted((self.run / "vectors" / "conditions").glob("*.safetensors"))
        return Condition.load(files[0]) if files else None

    # prompts and users --------------------------------------------------------------------
    @cached_property
    def prompts(self) -> pd.DataFrame:
        """The run's held-out prompts: ``prompt_id``, ``prompt``, ``user_id``, ``category``
        (empty without a run)."""
        cols = ["prompt_id", "prompt", "user_id", "category", "preferred"]
        path = self.run / "prompts.jsonl" if self.run is not None else None
        if path is None or not path.exists():
            return pd.DataFrame(columns=cols)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return pd.DataFrame([r for r in rows if r], columns=cols)

    def users(self) -> list[str]:
        """Users with held-out prompts or a personal vector."""
        found = set(self.prompts["user_id"].dropna())
        found |= {k.rsplit("/", 1)[1] for k in self.vectors if "/" in k}
        return sorted(found)

    def user_prompts(self, user: str | None) -> list[str]:
        """The user's held-out prompts (every held-out prompt when ``user`` is None)."""
        frame = self.prompts if user is None else self.prompts[self.prompts["user_id"] == user]
        return list(dict.fromkeys(frame["prompt"]))

    # results ----------------------------------------------------------------------------
    def cells(self, step: str) -> pd.DataFrame | None:
        """A sweep's cells: ``results/sweep/<step>/cells.parquet``, or ``cells.parquet`` of a
        sweep's own folder when ``--run`` is one."""
        if self.run is None:
            return None
        for path in (self.run / "sweep" / step / "cells.parquet", self.run / "cells.parquet"):
            if path.exists():
                return pd.read_parquet(path)
        return None

    def summary(self) -> dict[str, Any]:
        path = self.run / "summary.json" if self.run is not None else None
        if path is None or not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    def report_prompts(self) -> set[str] | None:
        """The prompts a study reports on (``splits.json``'s operating-α report side), or
        None (a sweep, or a run without splits)."""
        path = self.run / "splits.json" if self.run is not None else None
        if path is None or not path.exists():
            return None
        split = json.loads(path.read_text(encoding="utf-8")).get("operating_alpha") or {}
        return set(split["report"]) if "report" in split else None

    def true_weights(self, user: str) -> dict[str, float] | None:
        """The simulated set's true attribute weights of ``user`` (None for real data)."""
        if self.summary().get("data", "demo") != "demo":
            return None
        truth = json.loads((DEMO_DIR / "ground_truth.json").read_text(encoding="utf-8"))
        entry = truth.get("users", {}).get(user)
        return dict(entry["weights"]) if entry else None

    def steerx_detail(self, user: str) -> dict[str, Any] | None:
        """The token effects study's per-token item effects (``steerx_effects.json``'s
        ``detail``: each history conversation left out in turn) when they are this user's."""
        path = self.run / "steerx_effects.json" if self.run is not None else None
        if path is None or not path.exists():
            return None
        detail = json.loads(path.read_text(encoding="utf-8")).get("detail") or {}
        keys = {"user", "tokens", "items", "item_effect"}
        return detail if keys <= set(detail) and detail["user"] == user else None

    def steerx_card(self, user: str) -> dict[str, Any] | None:
        """The user's SteerX card (``steerx_cards.json``), if the run made one."""
        path = self.run / "steerx_cards.json" if self.run is not None else None
        if path is None or not path.exists():
            return None
        cards = json.loads(path.read_text(encoding="utf-8"))
        return next((c for c in cards if c.get("user") == user), None)
