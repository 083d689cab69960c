"""Selection and report splits: every quantity a study tunes (the operating α, the token
estimator and threshold, the KL budget's α) is chosen on a *selection* split and reported on
a disjoint *report* split. ``results/splits.json`` lists both sides' ids for each quantity,
``{quantity: {"select": [ids], "report": [ids], "unit": ...}}``, so a reader can check that no
reported number was tuned on the units it is reported on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from steerlens.core._jsonsafe import update_json
from steerlens.metrics.token_truth import text_id

__all__ = [
    "Split",
    "agreed_side",
    "record_selection",
    "split_ids",
    "split_parity",
    "write_split",
]

Unit = Literal["prompt", "text", "user"]


@dataclass(frozen=True)
class Split:
    """Two disjoint id lists; ``extra`` holds a second unit's split of the same quantity
    (e.g. the users of the token-effect targets, disjoint as well)."""

    select: list[str]
    report: list[str]
    unit: Unit
    extra: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unit not in ("prompt", "text", "user"):
            raise ValueError(f"unit must be 'prompt', 'text' or 'user', got {self.unit!r}")
        sides = {"ids": (self.select, self.report)}
        sides.update({k: (v["select"], v["report"]) for k, v in self.extra.items()})
        for name, (a, b) in sides.items():
            both = set(a) & set(b)
            if both:
                raise ValueError(f"selection and report {name} overlap: {sorted(both)[:5]}")
        if not self.select or not self.report:
            raise ValueError("a split needs ids on both sides")

    def as_dict(self) -> dict[str, Any]:
        return {
            "select": sorted(self.select),
            "report": sorted(self.report),
            "unit": self.unit,
            **self.extra,
        }


def split_ids(ids: Iterable[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """The distinct ``ids`` shuffled with ``seed`` and halved: (select, report); the report
    half gets the odd one."""
    unique = sorted({str(i) for i in ids})
    random.Random(f"split:{seed}").shuffle(unique)
    k = len(unique) // 2
    return sorted(unique[:k]), sorted(unique[k:])


def split_parity(key: str, seed: int = 0) -> Literal["select", "report"]:
    """A side for one id from a seeded hash, independent of which other ids exist (the
    split of texts that users share, whoever meets them first)."""
    h = hashlib.sha1(f"{seed}:{key}".encode(), usedforsecurity=False).digest()
    return "select" if h[0] % 2 == 0 else "report"


def agreed_side(user: str, text: str, seed: int = 0) -> Literal["select", "report"] | None:
    """The side of a (user, prompt text) row when the user's side and the text's side (each
    from ``split_parity``) agree, else ``None``: keeping only agreeing rows gives two sides
    that share neither users nor texts, whatever other rows exist (simulated users answer
    the same pool of prompts)."""
    side = split_parity(f"user:{user}", seed)
    return side if split_parity(f"text:{text_id(text)}", seed) == side else None


def write_split(results: str | Path, splits: Mapping[str, Split]) -> dict[str, Any]:
    """Merge ``splits`` into ``results/splits.json``; returns the file's content."""
    return update_json(Path(results) / "splits.json", {q: s.as_dict() for q, s in splits.items()})


def record_selection(
    results: str | Path, quantity: str, split: Split, chosen: Any, **info: Any
) -> dict[str, Any]:
    """Write ``split`` to ``results/splits.json`` and ``summary["selection"][quantity]``: the
    chosen value, both sides' sizes and unit, and ``info`` (e.g. the criterion). Returns that
    selection entry."""
    results = Path(results)
    write_split(results, {quantity: split})
    entry = {
        "chosen": chosen,
        "n_select": len(split.select),
        "n_report": len(split.report),
        "unit": split.unit,
        **{f"n_{k}_select": len(v["select"]) for k, v in split.extra.items()},
        **{f"n_{k}_report": len(v["report"]) for k, v in split.extra.items()},
        **info,
    }
    path = results / "summary.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    update_json(path, {"selection": {**current.get("selection", {}), quantity: entry}})
    return entry
