"""The grid of a sweep: its cells, prompts and generation settings, and the batch plan."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from steerlens.core.conditions import parse_gate_name
from steerlens.core.vectors import SteeringVector
from steerlens.metrics.summaries import BASELINE

VectorTable = Mapping[str, SteeringVector | Mapping[str, SteeringVector]]


@dataclass(frozen=True)
class Cell:
    """One generation: ``prompt_id`` steered with ``method``'s vector for ``user``."""

    method: str
    user: str
    alpha: float
    gate: str
    prompt_id: str
    kl_budget: float | None = None
    """Set in a KL-calibrated grid: the budget this user's α was calibrated to."""

    @property
    def key(self) -> str:
        # a calibrated cell names its budget and the α it was calibrated to: a changed
        # calibration never reuses parts generated at the old α
        dose = (
            f"{self.alpha:g}"
            if self.kl_budget is None
            else f"kl{self.kl_budget:g}@{self.alpha:.6g}"
        )
        return f"{self.method}|{self.user}|{dose}|{self.gate}|{self.prompt_id}"


@dataclass(frozen=True)
class SweepPrompt:
    """A prompt of the sweep, its user and (optionally) the user's preferred response."""

    prompt_id: str
    prompt: str
    user_id: str
    category: str = ""
    preferred: str | None = None


@dataclass(frozen=True)
class GenerationSettings:
    """What every cell's generation uses; part of each batch's name."""

    max_new_tokens: int = 48
    batch_size: int = 64  # rows decoded together (the run's generation_batch_size)
    cells_per_batch: int = 64
    chat: bool | None = None

    def __post_init__(self) -> None:
        if min(self.max_new_tokens, self.batch_size, self.cells_per_batch) < 1:
            raise ValueError("max_new_tokens, batch_size and cells_per_batch must be >= 1")


def make_grid(
    prompts: Sequence[SweepPrompt],
    methods: Sequence[str],
    alphas: Sequence[float],
    gates: Sequence[str] = ("all",),
    *,
    baseline: bool = True,
    calibrated: Callable[[str, str, float], float] | None = None,
) -> list[Cell]:
    """Every prompt x method x nonzero α x gate, each prompt steered with its own user's vector,
    plus (``baseline``) one unsteered cell per prompt. α 0 is the baseline, never a cell of a
    method: it is the same generation whatever the vector and gate.

    With ``calibrated(method, user, budget) -> α`` the values in ``alphas`` are KL budgets
    (``steerlens.run.divergence.calibrate_alpha``): each cell gets its user's α for the
    budget and records the budget in ``kl_budget``."""
    for g in gates:
        parse_gate_name(g)
    if BASELINE in methods:
        raise ValueError(f"{BASELINE!r} is the baseline's name, not a method")
    cells = []
    for p in prompts:
        if baseline:
            cells.append(Cell(BASELINE, p.user_id, 0.0, "all", p.prompt_id))
        cells += [
            Cell(m, p.user_id, float(a), g, p.prompt_id)
            if calibrated is None
            else Cell(m, p.user_id, calibrated(m, p.user_id, float(a)), g, p.prompt_id, float(a))
            for g in gates
            for m in methods
            for a in alphas
            if float(a) != 0.0
        ]
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("the grid has duplicate cells (repeated prompt ids, methods, α or gates)")
    return cells


def plan(
    cells: Sequence[Cell], settings: GenerationSettings, salt: str = ""
) -> list[tuple[str, list[Cell]]]:
    """The batches, in one fixed order: grouped by gate, cells of a prompt side by side;
    each named ``<index>-<hash of its cells and the settings>``."""
    ordered = sorted(cells, key=lambda c: (c.gate, c.prompt_id, c.method, c.alpha, c.user))
    stamp = json.dumps(asdict(settings), sort_keys=True) + salt
    batches: list[tuple[str, list[Cell]]] = []
    for gate in sorted({c.gate for c in ordered}):
        group = [c for c in ordered if c.gate == gate]
        for i in range(0, len(group), settings.cells_per_batch):
            chunk = group[i : i + settings.cells_per_batch]
            digest = hashlib.sha1(
                (stamp + "\n".join(c.key for c in chunk)).encode(), usedforsecurity=False
            ).hexdigest()[:12]
            batches.append((f"{len(batches):05d}-{digest}", chunk))
    return batches


def held_out_prompts(
    pairs: Sequence[Any],
    n: int,
    seed: int = 0,
    keep: Callable[[Any], bool] | None = None,
) -> list[SweepPrompt]:
    """One prompt per held-out turn-0 interaction (its user and preferred response), ``n`` of
    them, drawn round-robin over prompt categories so every category has rows; ``keep(pair)``,
    when given, says which interactions may be drawn (e.g. those whose user and prompt text
    fall on the same side of a split)."""
    seen: dict[str, SweepPrompt] = {}
    for p in pairs:
        if keep is not None and not keep(p):
            continue
        if p.turn == 0 and p.interaction_id not in seen:
            seen[p.interaction_id] = SweepPrompt(
                p.interaction_id, p.prompt, p.user_id, p.category, p.chosen
            )
    rows = sorted(seen.values(), key=lambda r: r.prompt_id)
    random.Random(seed).shuffle(rows)
    by_cat: dict[str, list[SweepPrompt]] = {}
    for r in rows:
        by_cat.setdefault(r.category, []).append(r)
    out: list[SweepPrompt] = []
    while len(out) < min(n, len(rows)):
        for cat in sorted(by_cat):
            if by_cat[cat] and len(out) < n:
                out.append(by_cat[cat].pop())
    return out
