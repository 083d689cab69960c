"""Running a sweep: batches written atomically to ``OUT/parts/`` (resumable), this
process's share of them (sharded), and the gathered ``OUT/cells.parquet``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from steerlens.core._progress import progress
from steerlens.core.conditions import Condition, Conditional, parse_gate_name
from steerlens.core.gates import Gate
from steerlens.core.hooks import AnyGate
from steerlens.core.models import HookedModel
from steerlens.core.vectors import SteeringVector
from steerlens.experiments.sweep.grid import (
    BASELINE,
    Cell,
    GenerationSettings,
    SweepPrompt,
    VectorTable,
    plan,
)
from steerlens.experiments.sweep.measures import Measure, measure_fingerprint, standard_measures
from steerlens.run.generation import Generation, generate

logger = logging.getLogger(__name__)


def engine_name(model: HookedModel, vectors: VectorTable) -> str:
    """The engine the sweep's generations run on: they ask for ``engine="auto"``, resolved here
    as ``generate`` resolves it for each hook point the batches use (the vectors' and, for
    unsteered batches, the residual stream's): ``"tl"`` where the fast path cannot run,
    ``"compiled"`` where ``"auto"`` compiles (CUDA), else ``"hf"``. Fallbacks found only
    while running (the fast path failing to build, the compiled engine refusing a steering
    vector) are not seen here; they give the same tokens."""
    from steerlens.core.engines import auto_compiles, hf

    hooks = {"hook_resid_post"} | {
        v.hook
        for e in vectors.values()
        for v in ([e] if isinstance(e, SteeringVector) else e.values())
    }
    picked = []
    for hook in sorted(hooks):
        if hf.fast_path_blocker(model, hook) is not None:
            picked.append(f"{hook}=tl")
        else:
            picked.append(f"{hook}={'compiled' if auto_compiles(model) else 'hf'}")
    return "auto:" + ",".join(picked)


def package_version() -> str:
    """steerlens' version (read at call time)."""
    from steerlens.core import _version

    return str(_version.__version__)


def sweep_salt(
    model: HookedModel,
    vectors: VectorTable,
    measure: Measure | None = None,
    conditions: Mapping[str, Condition] | None = None,
    engine: str = "auto",
) -> str:
    """A digest of what the cells' rows depend on beyond their keys and settings. Batch names
    include it, so a rerun where any of it changed never reuses old parts:

    * the model (name, class, dtype, a sample of its weights) and every vector's values;
    * the measure's fingerprint (``measure_fingerprint``: its code version and parameters,
      the ground truth it scores against); ``None`` stands for ``run_sweep``'s default
      measure, ``standard_measures()`` (its ``chat`` comes from the settings, named apart);
    * the decoding engine (``engine_name``) and the steerlens version;
    * the conditions gates name (their directions, points and thresholds), if any.

    ``gather`` after a sharded run needs the salt ``run_sweep`` named its parts with: this,
    with the same measure, computed before the run (as ``run_config`` does)."""
    h = hashlib.sha1(usedforsecurity=False)
    _model_stamp(h, model)
    for method in sorted(vectors):
        entry = vectors[method]
        table = {"": entry} if isinstance(entry, SteeringVector) else entry
        for user in sorted(table):
            vec = table[user]
            h.update(f"{method}|{user}|".encode())
            _vector_stamp(h, vec)
    for name in sorted(conditions or {}):
        h.update(f"condition|{name}|".encode())
        _condition_stamp(h, (conditions or {})[name])
    h.update(_run_stamp(model, vectors, measure, engine).encode())
    return h.hexdigest()[:16]


def _model_stamp(h: Any, model: HookedModel) -> None:
    param = next(model.parameters())
    h.update(
        f"{getattr(model.cfg, 'model_name', '')}|{type(model).__name__}|{param.dtype}".encode()
    )
    h.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())


def _vector_stamp(h: Any, vec: SteeringVector) -> None:
    """The vector's hook, layers, values and the condition it carries, if any."""
    h.update(f"{vec.hook}".encode())
    for layer in vec.layers:
        h.update(f"|{layer}|".encode())
        h.update(vec.directions[layer].detach().float().cpu().numpy().tobytes())
    if vec.condition is not None:
        h.update(b"|condition|")
        _condition_stamp(h, vec.condition)


def _condition_stamp(h: Any, cond: Condition) -> None:
    h.update(json.dumps(cond.describe(), sort_keys=True).encode())
    h.update(cond.direction.detach().float().cpu().numpy().tobytes())


def _run_stamp(
    model: HookedModel, vectors: VectorTable, measure: Measure | None, engine: str
) -> str:
    """The measure's fingerprint, the decoding engine and the steerlens version."""
    rows = {
        "measure": measure_fingerprint(standard_measures() if measure is None else measure),
        "engine": engine_name(model, vectors) if engine == "auto" else engine,
        "steerlens": package_version(),
    }
    return json.dumps(rows, sort_keys=True)


CONTENT = "content"
"""The column holding each row's content digest (``cell_contents``)."""


def cell_contents(
    model: HookedModel,
    cells: Sequence[Cell],
    prompts: Mapping[str, SweepPrompt],
    vectors: VectorTable,
    settings: GenerationSettings,
    measure: Measure | None = None,
    conditions: Mapping[str, Condition] | None = None,
    engine: str = "auto",
) -> list[str]:
    """Per cell, a digest of what its row is made from rather than what it is called: the
    model, the measure, the engine and version (as ``sweep_salt``), the decoding length and
    chat rule, the prompt record, the vector's values, α and the steered positions. Cells
    that generate the same text and measure it alike share it, across methods' names and
    sweeps: an α 0 cell is the baseline, ``first:0`` is ``prefill``, ``first:K`` with K at
    least the generated length is ``all``. A gate naming a condition keeps its condition's
    values (its rows also carry the projection)."""
    base = hashlib.sha1(usedforsecurity=False)
    _model_stamp(base, model)
    base.update(_run_stamp(model, vectors, measure, engine).encode())
    base.update(f"{settings.max_new_tokens}|{settings.chat}".encode())
    stamps: dict[tuple[str, str], bytes] = {}
    out = []
    for c in cells:
        h = base.copy()
        h.update(json.dumps(asdict(prompts[c.prompt_id]), sort_keys=True).encode())
        position, name = parse_gate_name(c.gate)
        vec = None if c.method == BASELINE else _vector(vectors, c)
        if vec is None or (c.alpha == 0.0 and name is None and vec.condition is None):
            h.update(b"|unsteered")  # steers nothing, whatever its vector and gate
            out.append(h.hexdigest()[:20])
            continue
        who = (c.method, c.user)
        if who not in stamps:
            v = hashlib.sha1(usedforsecurity=False)
            _vector_stamp(v, vec)
            stamps[who] = v.digest()
        h.update(stamps[who])
        gate = Gate.parse(position)
        stop = gate.stop if gate.stop < settings.max_new_tokens else float("inf")
        h.update(f"|{c.alpha!r}|{gate.start}|{stop}".encode())
        if name is not None:
            _condition_stamp(h, cell_gate(c.gate, conditions).condition)  # type: ignore[union-attr]
        out.append(h.hexdigest()[:20])
    return out


def _vector(vectors: VectorTable, cell: Cell) -> SteeringVector:
    entry = vectors[cell.method]
    if isinstance(entry, SteeringVector):
        return entry
    if cell.user not in entry:
        raise ValueError(f"method {cell.method!r} has no vector for user {cell.user!r}")
    return entry[cell.user]


def cell_gate(text: str, conditions: Mapping[str, Condition] | None) -> AnyGate:
    """A cell's gate from its name (``parse_gate_name``), its condition looked up by name."""
    position, name = parse_gate_name(text)
    if name is None:
        return position
    if not conditions or name not in conditions:
        have = sorted(conditions or {})
        raise ValueError(f"gate {text!r} names condition {name!r}; the sweep has {have}")
    return Conditional(conditions[name], Gate.parse(position))


def _check(
    cells: Sequence[Cell],
    prompts: Mapping[str, SweepPrompt],
    vectors: VectorTable,
    conditions: Mapping[str, Condition] | None = None,
) -> None:
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
        cell_gate(c.gate, conditions)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # an array column
        return value.tolist()
    if hasattr(value, "item"):  # numpy / torch scalars
        return _clean(value.item())
    return value


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _reused_rows(
    cells: list[Cell],
    contents: Sequence[str],
    known: Mapping[str, Mapping[str, Any]],
    make: Callable[[list[Cell]], list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """The rows of a batch: a cell whose content (``cell_contents``) is in ``known`` (rows
    made before) or repeats an earlier cell of the batch is copied; ``make`` runs the rest."""
    todo, seen = [], set(known)
    for i, content in enumerate(contents):
        if content not in seen:
            seen.add(content)
            todo.append(i)
    made = dict(
        zip(
            (contents[i] for i in todo), make([cells[i] for i in todo]) if todo else [], strict=True
        )
    )
    out = []
    for c, content in zip(cells, contents, strict=True):
        src = made.get(content) or known[content]
        row = {k: v for k, v in src.items() if k not in _CELL_FIELDS}
        out.append(
            {"key": c.key, **asdict(c), "category": src["category"], **row, CONTENT: content}
        )
    return out


_CELL_FIELDS = frozenset({"key", "category", CONTENT, *Cell.__dataclass_fields__})


def _run_batch(
    model: HookedModel,
    cells: list[Cell],
    prompts: Mapping[str, SweepPrompt],
    vectors: VectorTable,
    settings: GenerationSettings,
    measure: Measure,
    conditions: Mapping[str, Condition] | None = None,
    engine: str = "auto",
) -> list[dict[str, Any]]:
    rows = [prompts[c.prompt_id] for c in cells]
    steered = [c for c in cells if c.method != BASELINE]
    gate = cell_gate(cells[0].gate, conditions)
    kw: dict[str, Any] = dict(
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        chat=settings.chat,
        gate=gate,
        progress_bar=False,
        return_tokens=True,
        engine=engine,
    )
    if steered:
        filler = _vector(vectors, steered[0])  # α 0 rows add exactly 0 · v
        vecs = [filler if c.method == BASELINE else _vector(vectors, c) for c in cells]
        gen = generate(
            model, [r.prompt for r in rows], steering=vecs, alpha=[c.alpha for c in cells], **kw
        )
    else:  # a batch of baseline cells (its gate, a condition too, steers nothing)
        gen = generate(model, [r.prompt for r in rows], **{**kw, "gate": "all"})
    assert isinstance(gen, Generation)
    measured = measure(model, rows, gen)
    out = []
    for i, (c, r) in enumerate(zip(cells, rows, strict=True)):
        row: dict[str, Any] = {"key": c.key, **asdict(c), "category": r.category}
        row["generation"] = gen.texts[i]
        if gen.projections is not None and gen.conditions is not None:  # a conditioned batch
            row["projection"] = _clean(gen.projections[i])
            row["steered"] = bool(gen.conditions[i]) and c.alpha != 0.0
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
    conditions: Mapping[str, Condition] | None = None,
    rank: int = 0,
    world: int = 1,
    progress_bar: bool = True,
    engine: str = "auto",
    reuse: Sequence[pd.DataFrame] = (),
) -> pd.DataFrame | None:
    """Run this process's share of the sweep's batches that are not on disk yet.

    Args:
        cells: the grid (``make_grid``).
        prompts: the prompts the cells name (by ``prompt_id``).
        vectors: method -> one vector for everyone, or a dict user -> vector.
        out: the sweep's folder; ``parts/`` holds one file per finished batch.
        measure: columns to add per row (default ``standard_measures()``). Its fingerprint
            (``measure_fingerprint``) is part of every batch's name, with the model, the
            vectors, the decoding engine and the steerlens version (``sweep_salt``): a batch
            is read back from disk only when all of them are unchanged, else recomputed. A
            plain function is known by its name only: edits inside it are not detected.
        conditions: name -> ``Condition`` for the cells whose gate names one
            (``condition``, ``condition:NAME``, ``condition&first:4``); their rows add
            ``projection`` and ``steered``.
        rank / world: this process and how many share the sweep (batch b runs on b mod world).
        engine: ``generate``'s engine for every batch; ``"vllm"`` (the serve environment)
            sends each batch's rows to vLLM as requests with their own vector, α and gate (a
            conditioned batch's rows then carry no ``projection`` / ``steered``).
        reuse: rows of other sweeps (their gathered frames): a cell with the same content
            (``cell_contents``: the same model, measure, engine, decoding length, prompt
            record, vector values, α and steered positions) copies that row instead of
            generating it; so does a cell repeating one of this sweep's finished batches
            (``first:0`` after ``prefill``, an α 0 cell after the baseline). Every row records
            its content in the ``content`` column. A copy is the generation the same cell got
            in another batch: batches of other rows pad differently, so like any rerun with
            other batches it equals this batch's own to float rounding (greedy decoding can
            part at a near-tie).

    Returns:
        With ``world == 1`` the gathered tidy DataFrame (also written to
        ``out/cells.parquet``); with several processes ``None`` (rank 0 calls ``gather``
        once every process is done).
    """
    settings = settings or GenerationSettings()
    table = prompts if isinstance(prompts, Mapping) else {p.prompt_id: p for p in prompts}
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    _check(cells, table, vectors, conditions)
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    # measure None: the default, named by the settings
    salt = sweep_salt(model, vectors, measure, conditions, engine)
    if measure is None:
        measure = standard_measures(batch_size=settings.batch_size, chat=settings.chat)
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
    contents = dict(
        zip(
            (c.key for c in cells),
            cell_contents(model, cells, table, vectors, settings, measure, conditions, engine),
            strict=True,
        )
    )
    running = {bid for bid, _ in todo}
    known = _known_rows(reuse, [_part(out, bid) for bid, _ in batches if bid not in running])
    for bid, batch in progress(todo, total=len(todo), description=desc, enabled=progress_bar):
        rows = _reused_rows(
            batch,
            [contents[c.key] for c in batch],
            known,
            lambda cs: _run_batch(model, cs, table, vectors, settings, measure, conditions, engine),
        )
        write_atomic(_part(out, bid), "".join(json.dumps(r) + "\n" for r in rows))
        known.update((r[CONTENT], r) for r in rows)
    return gather(out, cells, settings, salt) if world == 1 else None


def _known_rows(frames: Sequence[pd.DataFrame], parts: Sequence[Path]) -> dict[str, Any]:
    """Rows by content: those of ``frames`` and of the finished ``parts`` that record one."""
    known: dict[str, Any] = {}
    for frame in frames:
        if CONTENT in frame:
            for rec in frame.to_dict(orient="records"):
                # a frame fills a column some rows lack with NaN: those keys were not in them
                row = {k: _clean(v) for k, v in rec.items()}
                known.setdefault(rec[CONTENT], {k: v for k, v in row.items() if v is not None})
    for part in parts:
        if part.exists():
            for line in part.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if CONTENT in rec:
                        known.setdefault(rec[CONTENT], rec)
    return known


def gather(
    out: str | Path,
    cells: Sequence[Cell],
    settings: GenerationSettings | None = None,
    salt: str = "",
) -> pd.DataFrame:
    """Read every batch's part in plan order into one tidy DataFrame, check it holds each cell
    exactly once, and write it to ``out/cells.parquet`` (atomically). ``salt`` is the one
    ``run_sweep`` named the parts with: ``sweep_salt(model, vectors, measure)``."""
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
