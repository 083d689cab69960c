"""The study (``steerlens study``, also ``steerlens demo``): its registered steps
(``steerlens.experiments.steps``: vectors and PPA, dose, side effects, calibrated, gating,
conditional, MMLU, token effects, SteerX vs all-history; one module each) run in order on one
model and one PRISM-format set. Each step writes its files under ``OUT/results/`` and merges
its keys into ``OUT/results/summary.json``; ``steps.json`` records each step's status, time,
inputs' fingerprint, keys and files, so a rerun skips the steps finished with the same inputs
(``steerlens.experiments.resume``) and reruns those a changed field reaches (marking stale
those of them not asked for). The report
(``steerlens.reporting.study``, ``steerlens report``) is drawn from those files alone, so a
partial run can be reported.

Every tuned quantity is chosen on a selection split and reported on a report split disjoint in
users and in texts (``results/splits.json``, ``summary["selection"]``). Intervals
(``steerlens.metrics.stats``) resample users, then prompts within them (users and texts both
where every user meets the same texts), use Student-t critical values, carry their n, and are
withheld below 5 units; ``summary["headline"]`` holds one primary claim and declared families
of secondary ones, worded by Holm's procedure within each family
(``steerlens.experiments.claims``); everything else is exploratory.

On the default (embedded SmolLM2-135M-Instruct, simulated PRISM-format set) this is a
small-model, simulated-data rehearsal of the CAA-on-PRISM study; its numbers are not the
study's Llama-3.1-8B / real-PRISM results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from steerlens.core._jsonsafe import json_safe, update_json, write_json
from steerlens.core._version import __version__
from steerlens.core.models import default_layers, load_model
from steerlens.data import load_prism
from steerlens.experiments.claims import build_headline
from steerlens.experiments.config import RunSection
from steerlens.experiments.provenance import code_provenance, machine
from steerlens.experiments.resume import (
    fingerprints,
    finished,
    snapshot,
    written_since,
)
from steerlens.experiments.steps import REGISTRY, step_names
from steerlens.experiments.steps.job import _Job
from steerlens.experiments.study_config import DemoConfig, StudyConfig
from steerlens.experiments.summary_file import read_summary
from steerlens.methods.registry import (
    MethodOptions,
)

logger = logging.getLogger(__name__)

__all__ = [
    "STEPS",
    "DemoConfig",
    "StudyConfig",
    "code_provenance",
    "mark_step",
    "run_demo",
    "study_key",
]

STEPS = step_names()
"""The built-in steps, in order, as imported (the runner reads the registry itself,
``steerlens.experiments.steps.step_names()``, so a step registered later runs too)."""
# summary keys every step rewrites (never one step's own)
_SHARED_KEYS = frozenset({"headline", "seconds", "selection"})


def _result_files() -> tuple[str, ...]:
    """Every file a step writes under results/ (the sweeps' parts excepted: content-addressed)."""
    return (
        "summary.json",
        "steps.json",
        "splits.json",
        *(f for s in REGISTRY.values() for f in s.files),
    )


def study_key(cfg: DemoConfig) -> str:
    """What the results depend on (the config but its output folder, step list, device and
    batching of the sweep): a run with another key in the same folder starts afresh."""
    skip = ("out", "steps", "steerx", "cells_per_batch", "force")  # none changes a number
    fields = {k: v for k, v in asdict(cfg).items() if k not in skip}
    fields["run"] = _run_key(fields["run"])
    # written as before the sections were nested (a folder made then keeps its key): the
    # method options only where they differ from the defaults, the token-effect study's seed
    # and batch size at its top level
    if cfg.options == MethodOptions():
        del fields["options"]
    if cfg.condition_method == "mean-diff":  # added later: the default keeps earlier keys
        del fields["condition_method"]
    if cfg.side_effect_texts is None:  # likewise
        del fields["side_effect_texts"]
    if cfg.steerx_max_targets == 8:  # likewise (SteerXStudyConfig's default)
        del fields["steerx_max_targets"]
    te = fields["token_effects"]
    te.update(_run_key(te.pop("run")))
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run_key(run: dict[str, Any]) -> dict[str, Any]:
    """A run section as the study key writes it: no device; the generation batch size only
    where it is not the default (added later: earlier folders keep their keys, and the steps
    that generate record it in their own fingerprints, so they rerun where it changed)."""
    default = RunSection().generation_batch_size
    return {
        k: v
        for k, v in run.items()
        if k != "device" and not (k == "generation_batch_size" and v == default)
    }


def mark_step(results: str | Path, name: str, seconds: float) -> None:
    """Record a step as done in ``results/steps.json`` (for jobs that run one step on its
    own, e.g. the analysis scripts), so the report draws its files."""
    path = Path(results) / "steps.json"
    status = json.loads(path.read_text()) if path.exists() else {}
    status[name] = {"status": "done", "seconds": round(seconds, 1)}
    write_json(path, status)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run ``cfg.steps`` in order; each writes its files and summary keys as it finishes, so
    a failed or interrupted run keeps what the earlier steps wrote (``results/steps.json``
    says which ran; the report draws only those). A step already finished in this folder with
    the same inputs (``Step.inputs``, ``steerlens.experiments.resume``) is skipped unless it
    is in ``cfg.force``; a step of ``cfg.steps`` whose inputs changed is rerun, and one outside
    ``cfg.steps`` is marked stale (its keys leave the summary; a step that needs it refuses to
    run). Returns ``results/summary.json``."""
    t0 = time.perf_counter()
    results = Path(cfg.out) / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary_path, steps_path = results / "summary.json", results / "steps.json"
    key = study_key(cfg)
    old = read_summary(summary_path) if summary_path.exists() else {}
    status: dict[str, Any] = json.loads(steps_path.read_text()) if steps_path.exists() else {}
    legacy = any(e.get("status") == "done" and "fingerprint" not in e for e in status.values())
    if old.get("study_key") != key and legacy:
        # another study's folder, written before steps had fingerprints: start afresh
        for name in _result_files():
            (results / name).unlink(missing_ok=True)
        shutil.rmtree(results / "vectors", ignore_errors=True)
        old, status = {}, {}
        # (sweep parts stay: their names hash their cells, the model and the vectors)
    names = step_names()
    fps = fingerprints(asdict(cfg), {n: REGISTRY[n].inputs for n in names}, names, __version__)
    todo = [s for s in names if s in cfg.steps]
    run = [s for s in todo if s in cfg.force or not finished(status.get(s), fps[s], results)]
    _check_needs(run, status, fps, results)
    if old:  # written back without the keys older versions named otherwise
        write_json(summary_path, old)
    seconds: dict[str, float] = dict(old.get("seconds", {}))
    stale = [
        s for s in status if s in fps and s not in todo and status[s].get("fingerprint") != fps[s]
    ]
    _forget(summary_path, status, [*stale, *run], seconds)
    for name in stale:
        status[name] = {"status": "stale", "why": "its inputs changed since it ran: rerun it"}
    write_json(steps_path, status)
    start = time.perf_counter()
    model = load_model(cfg.model, device=cfg.run.device, seed=cfg.run.seed)
    ds = load_prism(cfg.data)
    logger.info("%r", ds)
    seconds["load model"] = round(time.perf_counter() - start, 1)
    update_json(
        summary_path,
        {
            "model": cfg.model,
            "data": ds.source,
            "data_is_simulated": ds.is_simulated,
            "config": asdict(cfg),
            "study_key": key,
            "machine": machine(),
            "code": _code(status, [n for n in todo if n not in run]),
        },
    )
    job = _Job(cfg, model, ds, results, default_layers(model))
    for name in todo:
        if name not in run:
            logger.info("%s: finished earlier with the same inputs: skipped", name)
            continue
        seconds[name] = _run_step(job, name, fps[name], status, steps_path, summary_path)
        update_json(summary_path, {"seconds": {**seconds}})
        logger.info("%s: %.0f s", name, seconds[name])
    seconds["total"] = round(time.perf_counter() - t0, 1)
    summary = update_json(summary_path, {"seconds": seconds})
    return json_safe(summary)  # type: ignore[no-any-return]


def _code(status: Mapping[str, Any], kept: Sequence[str]) -> dict[str, Any]:
    """This run's code (``code_provenance``) and, under ``earlier``, the commit each step
    kept from an earlier run ran on, where that is not this run's (a step's inputs name no
    code: a resumed step's numbers are its own run's)."""
    code = code_provenance()
    earlier = {}
    for name in kept:
        entry = status.get(name) or {}
        if entry.get("status") != "done":
            continue
        ran = entry.get("code") or {}
        if ran.get("commit") != code["commit"] or ran.get("dirty") or code["dirty"]:
            earlier[name] = (ran.get("commit") or "not recorded") + (
                " with uncommitted changes" if ran.get("dirty") else ""
            )
    return {**code, "earlier": earlier} if earlier else code


def _check_needs(
    run: list[str], status: dict[str, Any], fps: dict[str, str], results: Path
) -> None:
    """A step to run must not read the results of a step that ran with other inputs (stale,
    failed or another fingerprint) and is not run now; a step that never ran is the step's
    own ``need`` to report."""
    for name in run:
        for need in REGISTRY[name].inputs.needs:
            entry = status.get(need)
            if need in run or entry is None or finished(entry, fps[need], results):
                continue
            why = "ran with other inputs" if entry.get("status") == "done" else entry["status"]
            raise RuntimeError(
                f"step {name!r} needs {need!r}, whose results in {results} are not from these "
                f"inputs ({why}): run it too (steerlens study --steps {need},{name}, or --from)"
            )


def _forget(
    summary_path: Path, status: dict[str, Any], names: list[str], seconds: dict[str, float]
) -> None:
    """Drop the summary keys and times the earlier runs of ``names`` wrote, and the keys
    they declare (they are rerun now, or stale)."""
    keys = {k for n in names for k in status.get(n, {}).get("keys", [])}
    steps = [REGISTRY[n] for n in names if n in REGISTRY]
    for n in names:
        seconds.pop(n, None)
    if not summary_path.exists() or not (keys or steps):
        return
    current = json.loads(summary_path.read_text())
    kept = {
        k: v
        for k, v in current.items()
        if k not in keys and not any(step.writes_key(k) for step in steps)
    }
    if kept.keys() == current.keys():
        return
    kept["headline"] = build_headline(kept)
    write_json(summary_path, kept)


def _run_step(
    job: _Job,
    name: str,
    fingerprint: str,
    status: dict[str, Any],
    steps_path: Path,
    summary_path: Path,
) -> float:
    """Run one step; record it in ``steps.json`` (with its fingerprint, the summary keys and
    the files it wrote) and its keys in the summary. Returns its seconds."""
    start = time.perf_counter()
    before_files = snapshot(job.results)
    before = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    status[name] = {"status": "running"}
    write_json(steps_path, status)
    try:
        keys = REGISTRY[name].run(job)
    except Exception as e:
        status[name] = {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(steps_path, status)
        raise
    undeclared = sorted(k for k in keys if not REGISTRY[name].writes_key(k))
    if undeclared:
        logger.warning(
            "step %r returned keys it does not declare (Step.keys): %s", name, undeclared
        )
    current = update_json(summary_path, keys)
    current = update_json(summary_path, {"headline": build_headline(current)})
    wrote = {k for k, v in current.items() if k not in before or before[k] != v} | set(keys)
    seconds = round(time.perf_counter() - start, 1)
    status[name] = {
        "status": "done",
        "seconds": seconds,
        "code": code_provenance(),
        "fingerprint": fingerprint,
        "keys": sorted(wrote - _SHARED_KEYS),
        "files": written_since(job.results, before_files),
    }
    write_json(steps_path, status)
    return seconds
