"""Running a sweep: batches written atomically to ``OUT/parts/`` (resumable), this
process's share of them (sharded), and the gathered ``OUT/cells.parquet``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
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
    for name in sorted(conditions or {}):
        cond = (conditions or {})[name]
        h.update(f"condition|{name}|{json.dumps(cond.describe(), sort_keys=True)}".encode())
        h.update(cond.direction.detach().float().cpu().numpy().tobytes())
    rows = {
        "measure": measure_fingerprint(standard_measures() if measure is None else measure),
        "engine": engine_name(model, vectors) if engine == "auto" else engine,
        "steerlens": package_version(),
    }
    h.update(json.dumps(rows, sort_keys=True).encode())
    return h.hexdigest()[:16]


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
    for bid, batch in progress(todo, total=len(todo), description=desc, enabled=progress_bar):
        rows = _run_batch(model, batch, table, vectors, settings, measure, conditions, engine)
        write_atomic(_part(out, bid), "".join(json.dumps(r) + "\n" for r in rows))
    return gather(out, cells, settings, salt) if world == 1 else None


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
