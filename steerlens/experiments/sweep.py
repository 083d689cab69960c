"""Resumable, shardable grids of steered generations: (vector method, user, α, gate, prompt).

A sweep is a list of ``Cell`` s. ``plan`` cuts them into batches in one fixed order (cells of a
batch share a gate; their vectors and α differ row by row, so 48 users x several α run as one
batched job). Each finished batch is written to ``OUT/parts/<batch>.jsonl`` with one atomic
rename: a run killed at any point loses at most the batch in flight, and a rerun skips every
batch already on disk — no lost rows, no duplicated rows. Batch names hash their cells and the
generation settings, so a changed grid or setting never reuses stale parts.

``accelerate launch -m steerlens.sweep CONFIG`` gives batch ``b`` to process ``b mod N`` (data
parallel, one model per process/GPU); rank 0 gathers the parts into one ``OUT/cells.parquet``.
The batches are the same whatever the number of processes, so the gathered file equals a
single-process run's row for row. A model larger than one GPU boots with ``device_map`` in a
single process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from steerlens.core._progress import progress
from steerlens.core.hooks import parse_gate
from steerlens.core.models import DEFAULT_MODEL, HookedModel, load_model
from steerlens.core.vectors import SteeringVector
from steerlens.data.mmlu import neutral_texts
from steerlens.data.prism import load_prism
from steerlens.methods import registry
from steerlens.methods.personal import pair_activations, population
from steerlens.methods.registry import METHODS, MethodOptions
from steerlens.metrics.preference import ground_truth_utility
from steerlens.metrics.summaries import BASELINE
from steerlens.metrics.text import (
    degenerate,
    distinct_n,
    perplexity,
    toxicity_abs_error,
)
from steerlens.metrics.toxicity import ToxicityScorer, get_scorer
from steerlens.run.divergence import calibrate_alpha
from steerlens.run.generation import Generation, generate
from steerlens.run.scoring import continuation_logprobs

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE",
    "Cell",
    "GenerationSettings",
    "SweepConfig",
    "SweepPrompt",
    "gather",
    "held_out_prompts",
    "make_grid",
    "plan",
    "run_config",
    "run_sweep",
    "standard_measures",
]


VectorTable = Mapping[str, SteeringVector | Mapping[str, SteeringVector]]
Measure = Callable[[HookedModel, list["SweepPrompt"], Generation], dict[str, list[Any]]]


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
        dose = f"{self.alpha:g}" if self.kl_budget is None else f"kl{self.kl_budget:g}"
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
    batch_size: int = 16
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
        parse_gate(g)
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


def sweep_salt(model: HookedModel, vectors: VectorTable) -> str:
    """A digest of what the cells' generations depend on beyond their keys and settings: the
    model (name, class, dtype, a sample of its weights) and every vector's values. Batch
    names include it, so a rerun with another model or other vectors never reuses old parts."""
    h = hashlib.sha1(usedforsecurity=False)
    param = next(model.parameters())
    h.update(
        f"{getattr(model.cfg, 'model_name', '')}|{type(model).__name__}|{param.dtype}".encode()
    )
    h.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    for method in sorted(vectors):
        entry = vectors[method]
        table = {"": entry} if isinstance(entry, SteeringVector) else entry
        for user in sorted(table):
            vec = table[user]
            h.update(f"{method}|{user}|{vec.hook}".encode())
            for layer in vec.layers:
                h.update(vec.directions[layer].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def standard_measures(
    ground_truth: Mapping[str, Any] | None = None,
    scorer: ToxicityScorer | None = None,
    *,
    batch_size: int = 16,
    chat: bool | None = None,
) -> Measure:
    """Toxicity and its absolute error against the preferred response, perplexity of the
    generated ids in their context under the unsteered model, distinct-2, empty/degenerate
    flags, and (simulated sets) the user's ground-truth utility."""

    def measure(
        model: HookedModel, rows: list[SweepPrompt], gen: Generation
    ) -> dict[str, list[Any]]:
        sc = scorer or get_scorer()
        texts = gen.texts
        out: dict[str, list[Any]] = {"toxicity": sc(texts)}
        if all(r.preferred is not None for r in rows):
            pref = sc([r.preferred or "" for r in rows])
            out["preferred_toxicity"] = pref
            out["abs_error"] = toxicity_abs_error(out["toxicity"], pref)
        lps = continuation_logprobs(  # in the context they were generated in
            model, [r.prompt for r in rows], gen.tokens, batch_size=batch_size, chat=chat
        )
        nll = [float(-lp.mean()) if lp.numel() else math.nan for lp in lps]
        out["nll"] = nll
        out["perplexity"] = perplexity(nll)
        out["n_tokens"] = [int(t.numel()) for t in gen.tokens]
        out["distinct_2"] = distinct_n(texts, 2)
        out["empty"] = [not t.strip() for t in texts]
        out["degenerate"] = degenerate(texts)
        if ground_truth is not None and "users" in ground_truth:
            out["utility"] = ground_truth_utility(texts, [r.user_id for r in rows], ground_truth)
        return out

    return measure


def _vector(vectors: VectorTable, cell: Cell) -> SteeringVector:
    entry = vectors[cell.method]
    if isinstance(entry, SteeringVector):
        return entry
    if cell.user not in entry:
        raise ValueError(f"method {cell.method!r} has no vector for user {cell.user!r}")
    return entry[cell.user]


def _check(cells: Sequence[Cell], prompts: Mapping[str, SweepPrompt], vectors: VectorTable) -> None:
    unknown_p = sorted({c.prompt_id for c in cells} - set(prompts))
    if unknown_p:
        raise ValueError(f"{len(unknown_p)} cells name unknown prompts, e.g. {unknown_p[:3]}")
    unknown_m = sorted({c.method for c in cells if c.method != BASELINE} - set(vectors))
    if unknown_m:
        raise ValueError(f"no vectors for methods {unknown_m} (have {sorted(vectors)})")
    hooks = {
        (v.hook, tuple(v.layers))
        for e in vectors.values()
        for v in ([e] if isinstance(e, SteeringVector) else e.values())
    }
    if len(hooks) > 1:  # rows of one batch share the hook points
        raise ValueError(f"the sweep's vectors must share one hook and layer set, got {hooks}")
    for c in cells:
        if c.method == BASELINE and c.alpha != 0.0:
            raise ValueError(f"the baseline cell {c.key} must have alpha 0")
        if c.method != BASELINE:
            _vector(vectors, c)
        parse_gate(c.gate)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _clean(value.item())
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _run_batch(
    model: HookedModel,
    cells: list[Cell],
    prompts: Mapping[str, SweepPrompt],
    vectors: VectorTable,
    settings: GenerationSettings,
    measure: Measure,
) -> list[dict[str, Any]]:
    rows = [prompts[c.prompt_id] for c in cells]
    steered = [c for c in cells if c.method != BASELINE]
    kw: dict[str, Any] = dict(
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        chat=settings.chat,
        gate=parse_gate(cells[0].gate),
        progress_bar=False,
        return_tokens=True,
    )
    if steered:
        filler = _vector(vectors, steered[0])  # α 0 rows add exactly 0 · v
        vecs = [filler if c.method == BASELINE else _vector(vectors, c) for c in cells]
        gen = generate(
            model, [r.prompt for r in rows], steering=vecs, alpha=[c.alpha for c in cells], **kw
        )
    else:
        gen = generate(model, [r.prompt for r in rows], **kw)
    assert isinstance(gen, Generation)
    measured = measure(model, rows, gen)
    out = []
    for i, (c, r) in enumerate(zip(cells, rows, strict=True)):
        row: dict[str, Any] = {"key": c.key, **asdict(c), "category": r.category}
        row["generation"] = gen.texts[i]
        row.update({k: _clean(v[i]) for k, v in measured.items()})
        out.append(row)
    return out


def _part(out: Path, batch_id: str) -> Path:
    return out / "parts" / f"{batch_id}.jsonl"


def run_sweep(
    model: HookedModel,
    cells: Sequence[Cell],
    prompts: Sequence[SweepPrompt] | Mapping[str, SweepPrompt],
    vectors: VectorTable,
    out: str | Path,
    *,
    settings: GenerationSettings | None = None,
    measure: Measure | None = None,
    rank: int = 0,
    world: int = 1,
    progress_bar: bool = True,
) -> pd.DataFrame | None:
    """Run this process's share of the sweep's batches that are not on disk yet.

    Args:
        cells: the grid (``make_grid``).
        prompts: the prompts the cells name (by ``prompt_id``).
        vectors: method -> one vector for everyone, or a dict user -> vector.
        out: the sweep's folder; ``parts/`` holds one file per finished batch.
        measure: columns to add per row (default ``standard_measures()``).
        rank / world: this process and how many share the sweep (batch b runs on b mod world).

    Returns:
        With ``world == 1`` the gathered tidy DataFrame (also written to
        ``out/cells.parquet``); with several processes ``None`` (rank 0 calls ``gather``
        once every process is done).
    """
    settings = settings or GenerationSettings()
    table = prompts if isinstance(prompts, Mapping) else {p.prompt_id: p for p in prompts}
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    _check(cells, table, vectors)
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    measure = measure or standard_measures(batch_size=settings.batch_size, chat=settings.chat)
    salt = sweep_salt(model, vectors)
    batches = plan(cells, settings, salt)
    mine = [b for i, b in enumerate(batches) if i % world == rank]
    todo = [(bid, cs) for bid, cs in mine if not _part(out, bid).exists()]
    logger.info(
        "rank %d/%d: %d of %d batches, %d already on disk",
        rank,
        world,
        len(mine),
        len(batches),
        len(mine) - len(todo),
    )
    desc = f"sweep {out.name}" + (f" [rank {rank}/{world}]" if world > 1 else "")
    for bid, batch in progress(todo, total=len(todo), description=desc, enabled=progress_bar):
        rows = _run_batch(model, batch, table, vectors, settings, measure)
        _write_atomic(_part(out, bid), "".join(json.dumps(r) + "\n" for r in rows))
    return gather(out, cells, settings, salt) if world == 1 else None


def gather(
    out: str | Path,
    cells: Sequence[Cell],
    settings: GenerationSettings | None = None,
    salt: str = "",
) -> pd.DataFrame:
    """Read every batch's part in plan order into one tidy DataFrame, check it holds each cell
    exactly once, and write it to ``out/cells.parquet`` (atomically)."""
    out = Path(out)
    batches = plan(cells, settings or GenerationSettings(), salt)
    missing = [bid for bid, _ in batches if not _part(out, bid).exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(batches)} batches are not on disk yet (e.g. {missing[0]}): "
            "run the sweep again to finish them"
        )
    records = [
        json.loads(line)
        for bid, _ in batches
        for line in _part(out, bid).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    frame = pd.DataFrame.from_records(records)
    if len(frame) != len(cells) or frame["key"].duplicated().any():
        raise RuntimeError(f"the parts hold {len(frame)} rows for {len(cells)} cells")
    tmp = out / f".cells.{os.getpid()}.parquet"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, out / "cells.parquet")
    return frame


# --- the config-driven job (`steerlens sweep CONFIG`, `accelerate launch -m steerlens.sweep`) --


@dataclass
class SweepConfig:
    """A sweep over a PRISM-format set's held-out prompts (YAML or JSON file, or in code).

    ``methods`` are built from the set's training pairs (names from
    ``steerlens.methods.registry.METHODS``; per-user vectors rescaled to the population
    vector's norms so that one α grid fits every method; ``rank``, ``C`` and ``shrink`` default
    to ``MethodOptions``'); ``vector_files`` adds fixed vectors by name (one vector for every
    user).
    """

    model: str = DEFAULT_MODEL
    backend: Literal["bridge", "hooked"] = "bridge"
    dtype: str | None = None
    device: str | None = None  # "cpu", "cuda", ...; default: CUDA when available, else CPU
    device_map: str | None = None  # e.g. "auto": one process over several GPUs
    data: str = "demo"
    out: str = "results/sweep"
    methods: list[str] = field(default_factory=lambda: ["population"])
    vector_files: dict[str, str] = field(default_factory=dict)
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])
    # "kl": the values in `alphas` are KL budgets (nats per token on neutral text); each
    # user's vector gets the α that meets the budget (calibrate_alpha, cached in the vector)
    alpha_mode: Literal["fixed", "kl"] = "fixed"
    kl_texts: int = 8  # neutral MMLU question stems the calibration averages over
    gates: list[str] = field(default_factory=lambda: ["all"])
    n_prompts: int = 48
    held_out: float = 0.25
    split_by: Literal["conversation", "prompt"] = "prompt"
    train_pairs: int | None = None  # cap on the training pairs the vectors see
    layers: list[int] | None = None
    rank: int = MethodOptions.rank
    C: float = MethodOptions.C
    shrink: float = MethodOptions.shrink
    max_new_tokens: int = 48
    batch_size: int = 16
    cells_per_batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; use {list(METHODS)} or vector_files")
        MethodOptions(self.rank, self.C, self.shrink)
        clash = set(self.methods) & set(self.vector_files)
        if clash:
            raise ValueError(f"vector_files reuse method names {sorted(clash)}")
        if not self.methods and not self.vector_files:
            raise ValueError("a sweep needs at least one method or vector file")
        if self.device is not None and self.device_map is not None:
            raise ValueError("pass either device or device_map, not both")
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device {self.device!r}: {e}") from None
        for g in self.gates:
            parse_gate(g)
        if self.n_prompts < 1 or not 0 < self.held_out < 1:
            raise ValueError("n_prompts >= 1 and held_out in (0, 1) are needed")
        if self.split_by not in ("conversation", "prompt"):
            raise ValueError(f"split_by must be 'conversation' or 'prompt', got {self.split_by!r}")
        GenerationSettings(self.max_new_tokens, self.batch_size, self.cells_per_batch)
        if self.alpha_mode not in ("fixed", "kl"):
            raise ValueError(f"alpha_mode must be 'fixed' or 'kl', got {self.alpha_mode!r}")
        if self.alpha_mode == "kl" and (min(self.alphas) < 0 or self.kl_texts < 1):
            raise ValueError("alpha_mode 'kl' needs budgets (alphas) >= 0 and kl_texts >= 1")

    @property
    def settings(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.batch_size, self.cells_per_batch)

    @classmethod
    def from_file(cls, path: str | Path) -> SweepConfig:
        """Load a ``.json``, ``.yaml`` or ``.yml`` file; unknown keys are an error."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a sweep config is a mapping of options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown sweep options {unknown}")
        return cls(**raw)


DOSE_ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]


def dose_sweep_config(model: str, data: str, out: str | Path, **options: Any) -> SweepConfig:
    """The dose-response sweep of the analysis scripts (every method, the demo's α grid) in
    ``OUT/results/sweep/dose``: the dose-response and selectivity scripts share it, so the
    second resumes from the first's batches."""
    options.setdefault("methods", list(METHODS))
    options.setdefault("alphas", list(DOSE_ALPHAS))
    return SweepConfig(
        model=model, data=data, out=str(Path(out) / "results" / "sweep" / "dose"), **options
    )


def script_arguments(description: str, *, dose: bool = True) -> argparse.ArgumentParser:
    """The options every sweep analysis script takes: model, data, out (and, for the dose
    sweep, methods, α grid, prompts and new tokens)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default="demo")
    ap.add_argument("--out", default=".")
    ap.add_argument("--n-prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    if dose:
        ap.add_argument("--methods", nargs="+", default=list(METHODS))
        ap.add_argument("--alphas", nargs="+", type=float, default=list(DOSE_ALPHAS))
    return ap


def held_out_prompts(pairs: Sequence[Any], n: int, seed: int = 0) -> list[SweepPrompt]:
    """One prompt per held-out turn-0 interaction (its user and preferred response), ``n`` of
    them, drawn round-robin over prompt categories so every category has rows."""
    seen: dict[str, SweepPrompt] = {}
    for p in pairs:
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


def build_vectors(
    model: HookedModel,
    train: Sequence[Any],
    methods: Sequence[str],
    users: Sequence[str],
    *,
    layers: list[int] | None = None,
    options: MethodOptions | None = None,
    batch_size: int = 16,
    progress_bar: bool = True,
) -> dict[str, SteeringVector | dict[str, SteeringVector]]:
    """The methods' vectors (``steerlens.methods.registry``) from one pair-activation table of
    ``train``; per-user vectors are rescaled to the population vector's norms."""
    pa = pair_activations(
        model, list(train), layers, batch_size=batch_size, progress_bar=progress_bar
    )
    built = registry.build_vectors(pa, methods, users, options)
    pop = built.get("population")
    norms = (pop if isinstance(pop, SteeringVector) else population(pa)).norms()
    return {
        name: {u: v.rescaled(norms) for u, v in vec.items()} if isinstance(vec, dict) else vec
        for name, vec in built.items()
    }


def calibrate_table(
    model: HookedModel,
    vectors: VectorTable,
    budgets: Sequence[float],
    texts: Sequence[str],
    *,
    batch_size: int = 16,
) -> dict[tuple[str, str, float], float]:
    """``(method, user, budget) -> α`` for every vector and nonzero KL budget: the α whose mean
    per-token KL on ``texts`` meets the budget (``calibrate_alpha``, all of a method's users in
    the same batched passes; cached in each vector's metadata). A method with one vector for
    everyone is keyed by user ``"*"``; look-ups for any user fall back to it."""
    out: dict[tuple[str, str, float], float] = {}
    for method, entry in vectors.items():
        users = {"*": entry} if isinstance(entry, SteeringVector) else dict(entry)
        for b in budgets:
            if float(b) == 0.0:
                continue
            alphas = calibrate_alpha(
                model, list(users.values()), texts, float(b), batch_size=batch_size
            )
            out.update({(method, u, float(b)): a for u, a in zip(users, alphas, strict=True)})
    return _AnyUser(out)


class _AnyUser(dict):  # type: ignore[type-arg]
    """Look-ups of (method, user, budget) fall back to (method, "*", budget)."""

    def __missing__(self, key: tuple[str, str, float]) -> float:
        m, _, b = key
        if (m, "*", b) in self:
            return float(self[(m, "*", b)])
        raise KeyError(key)


def save_vectors(vectors: VectorTable, folder: Path) -> None:
    for method, entry in vectors.items():
        if isinstance(entry, SteeringVector):
            entry.save(folder / f"{method}.safetensors")
        else:
            (folder / method).mkdir(parents=True, exist_ok=True)
            for user, vec in entry.items():
                vec.save(folder / method / f"{user}.safetensors")


def load_vectors(folder: Path, methods: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in methods:
        single = folder / f"{method}.safetensors"
        if single.exists():
            out[method] = SteeringVector.load(single)
        elif (folder / method).is_dir():
            out[method] = {
                f.stem: SteeringVector.load(f)
                for f in sorted((folder / method).glob("*.safetensors"))
            }
        else:
            raise FileNotFoundError(f"no vectors for {method!r} under {folder}")
    return out


class _Dist:
    """Rank, world size and a barrier: accelerate's when launched by it, else one process."""

    def __init__(self, cpu: bool = False) -> None:
        self.rank, self.world, self.device = 0, 1, None
        self._state: Any = None
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch
            from accelerate import PartialState

            # without a GPU (or when asked for the CPU), processes started by `accelerate
            # launch --multi_gpu` (torchrun) join a gloo group on CPU; accelerate only does
            # that when asked for cpu
            cpu = cpu or not torch.cuda.is_available()
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))  # processes on this node
            if not cpu and local > torch.cuda.device_count():
                n = torch.cuda.device_count()
                raise ValueError(
                    f"{local} processes on this machine but {n} visible GPU(s): one process "
                    f"per GPU (--num_processes {n}), or device: cpu in the config"
                )
            self._state = PartialState(cpu=cpu)
            self.rank, self.world = self._state.process_index, self._state.num_processes
            self.device = str(self._state.device)
        self._cpu = cpu

    def barrier(self) -> None:
        if self._state is None:
            return
        if self._cpu:
            import torch.distributed as td

            # accelerate's barrier passes device_ids=[local rank], which a gloo group on a
            # machine that has GPUs takes for CUDA devices (rank 1 of 2 on one GPU fails)
            td.barrier()
        else:
            self._state.wait_for_everyone()


def run_config(cfg: SweepConfig, *, progress_bar: bool = True) -> pd.DataFrame | None:
    """Build (or reload) the vectors, run this process's batches, gather on rank 0.

    Returns the tidy DataFrame on rank 0 (``None`` on the other ranks).
    """
    import torch

    dist = _Dist(cpu=cfg.device is not None and torch.device(cfg.device).type == "cpu")
    if cfg.device_map is not None and dist.world > 1:
        raise ValueError(
            "device_map spreads one model over the GPUs: run it in one process, not under "
            "a multi-process launch"
        )
    out = Path(cfg.out)
    model = load_model(
        cfg.model,
        backend=cfg.backend,
        dtype=cfg.dtype,
        device=None if cfg.device_map else (dist.device if dist.world > 1 else cfg.device),
        device_map=cfg.device_map,
        seed=cfg.seed,
    )
    ds = load_prism(cfg.data)
    vec_dir = out / "vectors"
    # what the vectors depend on: rebuilt when it changes
    recipe = json.dumps(
        {
            k: getattr(cfg, k)
            for k in (
                "model",
                "backend",
                "dtype",
                "data",
                "methods",
                "held_out",
                "split_by",
                "train_pairs",
                "layers",
                "rank",
                "C",
                "shrink",
                "seed",
            )
        },
        sort_keys=True,
    )
    if dist.rank == 0:
        train, test = ds.split(cfg.held_out, cfg.seed, by=cfg.split_by, turn0_only=True)
        if cfg.train_pairs is not None:
            train = random.Random(cfg.seed).sample(train, min(cfg.train_pairs, len(train)))
        train_users = {p.user_id for p in train}
        prompts = held_out_prompts(
            [p for p in test if p.user_id in train_users], cfg.n_prompts, cfg.seed
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        _write_atomic(out / "prompts.jsonl", "".join(json.dumps(asdict(p)) + "\n" for p in prompts))
        done = vec_dir / "done"
        if cfg.methods and not (done.exists() and done.read_text() == recipe):
            users = sorted({p.user_id for p in prompts})
            built = build_vectors(
                model,
                train,
                cfg.methods,
                users,
                layers=cfg.layers,
                options=MethodOptions(cfg.rank, cfg.C, cfg.shrink),
                batch_size=cfg.batch_size,
                progress_bar=progress_bar,
            )
            if vec_dir.exists():
                shutil.rmtree(vec_dir)
            save_vectors(built, vec_dir)
            done.write_text(recipe)
        if cfg.alpha_mode == "kl" and cfg.methods:  # calibrated once, saved with the vectors
            vecs = load_vectors(vec_dir, cfg.methods)
            calibrate_table(
                model,
                vecs,
                cfg.alphas,
                neutral_texts(cfg.kl_texts, seed=cfg.seed),
                batch_size=cfg.batch_size,
            )
            save_vectors(vecs, vec_dir)
    dist.barrier()
    # every rank reads rank 0's prompts and vectors, so all plan the same batches
    prompts = [
        SweepPrompt(**json.loads(line))
        for line in (out / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    vectors: dict[str, Any] = load_vectors(vec_dir, cfg.methods) if cfg.methods else {}
    vectors.update({k: SteeringVector.load(v) for k, v in cfg.vector_files.items()})
    calibrated = None
    if cfg.alpha_mode == "kl":
        table = calibrate_table(
            model,
            vectors,
            cfg.alphas,
            neutral_texts(cfg.kl_texts, seed=cfg.seed),
            batch_size=cfg.batch_size,
        )
        calibrated = lambda m, u, b: table[(m, u, b)]  # noqa: E731
    cells = make_grid(prompts, list(vectors), cfg.alphas, cfg.gates, calibrated=calibrated)
    measure = standard_measures(ds.ground_truth, batch_size=cfg.batch_size)
    frame = run_sweep(
        model,
        cells,
        prompts,
        vectors,
        out,
        settings=cfg.settings,
        measure=measure,
        rank=dist.rank,
        world=dist.world,
        progress_bar=progress_bar,
    )
    if dist.world == 1:
        return frame
    dist.barrier()
    if dist.rank != 0:
        return None
    return gather(out, cells, cfg.settings, sweep_salt(model, vectors))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m steerlens.experiments.sweep CONFIG [--out DIR]`` (also under ``accelerate launch``)."""
    parser = argparse.ArgumentParser(
        prog="steerlens.experiments.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("config", type=Path, help="a sweep config (.yaml / .json)")
    parser.add_argument("--out", default=None, help="the sweep's folder (overrides the config)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SweepConfig.from_file(args.config)
    if args.out is not None:
        cfg.out = args.out
    frame = run_config(cfg, progress_bar=not args.no_progress)
    if frame is not None:
        logger.info("wrote %d rows to %s", len(frame), Path(cfg.out) / "cells.parquet")


if __name__ == "__main__":
    main()
