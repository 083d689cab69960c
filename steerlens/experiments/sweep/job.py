"""The config-driven job (``steerlens sweep CONFIG``, ``accelerate launch -m steerlens.sweep``)."""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from steerlens.core.conditions import Condition, parse_gate_name
from steerlens.core.models import DEFAULT_MODEL, load_model
from steerlens.core.vectors import SteeringVector
from steerlens.data.mmlu import neutral_texts
from steerlens.data.prism import load_prism
from steerlens.experiments.config import RunSection, as_section, load_config
from steerlens.experiments.sweep.distributed import _Dist
from steerlens.experiments.sweep.grid import (
    GenerationSettings,
    SweepPrompt,
    held_out_prompts,
    make_grid,
)
from steerlens.experiments.sweep.measures import standard_measures
from steerlens.experiments.sweep.runner import gather, run_sweep, sweep_salt, write_atomic
from steerlens.experiments.sweep.vectors import (
    CalibrationTable,
    build_rescaled_vectors,
    calibrate_table,
    load_conditions,
    load_vectors,
    save_conditions,
    save_vectors,
)
from steerlens.methods.registry import METHODS, MethodOptions, method_names

logger = logging.getLogger(__name__)

# --- the config-driven job (`steerlens sweep CONFIG`, `accelerate launch -m steerlens.sweep`) --


@dataclass
class SweepConfig:
    """A sweep over a PRISM-format set's held-out prompts (YAML or JSON file, or in code).

    ``methods`` are built from the set's training pairs (names from
    ``steerlens.methods.registry.METHODS``; per-user vectors rescaled to the population
    vector's norms so that one α grid fits every method; ``options``: their rank, C and
    shrink); ``vector_files`` adds fixed vectors by name (one vector for every user). ``run``:
    seed, device ("cpu", "cuda", ...; default CUDA when available) and batch size.
    ``conditions`` names condition files (``Condition.save``, e.g. from ``fit_condition``)
    that ``gates`` use (``condition``, ``condition:NAME``, ``condition&first:4``); they are
    copied beside the vectors (``OUT/vectors/conditions/``).
    """

    model: str = DEFAULT_MODEL
    backend: Literal["bridge", "hooked"] = "bridge"
    dtype: str | None = None
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
    conditions: dict[str, str] = field(default_factory=dict)
    n_prompts: int = 48
    held_out: float = 0.25
    split_by: Literal["conversation", "prompt"] = "prompt"
    train_pairs: int | None = None  # cap on the training pairs the vectors see
    layers: list[int] | None = None
    options: MethodOptions = field(default_factory=MethodOptions)  # rank, C, shrink
    max_new_tokens: int = 48
    cells_per_batch: int = 64
    run: RunSection = field(default_factory=RunSection)  # seed, device, batch size

    def __post_init__(self) -> None:
        self.options = as_section(self.options, MethodOptions)
        self.run = as_section(self.run, RunSection)
        self.methods = method_names(self.methods, also="or vector_files")
        clash = set(self.methods) & set(self.vector_files)
        if clash:
            raise ValueError(f"vector_files reuse method names {sorted(clash)}")
        if not self.methods and not self.vector_files:
            raise ValueError("a sweep needs at least one method or vector file")
        if self.run.device is not None and self.device_map is not None:
            raise ValueError("pass either run.device or device_map, not both")
        for g in self.gates:
            _, name = parse_gate_name(g)
            if name is not None and name not in self.conditions:
                raise ValueError(f"gate {g!r} names condition {name!r}: add it to conditions")
        if self.n_prompts < 1 or not 0 < self.held_out < 1:
            raise ValueError("n_prompts >= 1 and held_out in (0, 1) are needed")
        if self.split_by not in ("conversation", "prompt"):
            raise ValueError(f"split_by must be 'conversation' or 'prompt', got {self.split_by!r}")
        GenerationSettings(
            self.max_new_tokens, self.run.generation_batch_size, self.cells_per_batch
        )
        if self.alpha_mode not in ("fixed", "kl"):
            raise ValueError(f"alpha_mode must be 'fixed' or 'kl', got {self.alpha_mode!r}")
        if self.alpha_mode == "kl" and (min(self.alphas) < 0 or self.kl_texts < 1):
            raise ValueError("alpha_mode 'kl' needs budgets (alphas) >= 0 and kl_texts >= 1")

    @property
    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            self.max_new_tokens, self.run.generation_batch_size, self.cells_per_batch
        )

    @classmethod
    def from_file(cls, path: str | Path) -> SweepConfig:
        """Load a ``.json``, ``.yaml`` or ``.yml`` file; unknown keys are an error; the flat
        keys of older files (``seed``, ``device``, ``batch_size``, ``rank``, ``C``,
        ``shrink``) load into their sections with a ``DeprecationWarning``."""
        return load_config(cls, path)


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


def _recipe(cfg: SweepConfig) -> str:
    """What the vectors depend on (they are rebuilt when it changes)."""
    return json.dumps(
        {
            **{
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
                )
            },
            # the keys the recipe had before the sections (a folder made then stays valid)
            **asdict(cfg.options),
            "seed": cfg.run.seed,
        },
        sort_keys=True,
    )


def _prepare(
    cfg: SweepConfig, model: Any, ds: Any, out: Path, vec_dir: Path, *, progress_bar: bool
) -> None:
    """Rank 0's part: write the config and prompts, build the vectors, calibrate α for KL."""
    recipe = _recipe(cfg)
    train, test = ds.split(cfg.held_out, cfg.run.seed, by=cfg.split_by, turn0_only=True)
    if cfg.train_pairs is not None:
        train = random.Random(cfg.run.seed).sample(train, min(cfg.train_pairs, len(train)))
    train_users = {p.user_id for p in train}
    prompts = held_out_prompts(
        [p for p in test if p.user_id in train_users], cfg.n_prompts, cfg.run.seed
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    shutil.rmtree(vec_dir / "conditions", ignore_errors=True)
    save_conditions({k: Condition.load(v) for k, v in cfg.conditions.items()}, vec_dir)
    write_atomic(out / "prompts.jsonl", "".join(json.dumps(asdict(p)) + "\n" for p in prompts))
    done = vec_dir / "done"
    if cfg.methods and not (done.exists() and done.read_text() == recipe):
        users = sorted({p.user_id for p in prompts})
        built = build_rescaled_vectors(
            model,
            train,
            cfg.methods,
            users,
            layers=cfg.layers,
            options=cfg.options,
            batch_size=cfg.run.batch_size,
            progress_bar=progress_bar,
        )
        if vec_dir.exists():
            shutil.rmtree(vec_dir)
        save_vectors(built, vec_dir)
        done.write_text(recipe)
    if cfg.alpha_mode == "kl":  # calibrated once, on rank 0; every rank reads its table
        vecs: dict[str, Any] = load_vectors(vec_dir, cfg.methods) if cfg.methods else {}
        vecs.update({k: SteeringVector.load(v) for k, v in cfg.vector_files.items()})
        table = calibrate_table(
            model,
            vecs,
            cfg.alphas,
            neutral_texts(cfg.kl_texts, seed=cfg.run.seed),
            batch_size=cfg.run.batch_size,
        )
        save_vectors({m: vecs[m] for m in cfg.methods}, vec_dir)  # carry their calibration
        write_atomic(
            out / "calibration.json",
            json.dumps([[m, u, b, a] for (m, u, b), a in table.items()]),
        )


def _plan(
    cfg: SweepConfig, out: Path, vec_dir: Path
) -> tuple[list[SweepPrompt], dict[str, Any], Any]:
    """Rank 0's prompts, vectors and (KL mode) calibrated α, as every rank reads them (the
    conditions: ``load_conditions(vec_dir)``)."""
    prompts = [
        SweepPrompt(**json.loads(line))
        for line in (out / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    vectors: dict[str, Any] = load_vectors(vec_dir, cfg.methods) if cfg.methods else {}
    vectors.update({k: SteeringVector.load(v) for k, v in cfg.vector_files.items()})
    calibrated = None
    if cfg.alpha_mode == "kl":  # rank 0's table: every rank plans the same cells
        rows = json.loads((out / "calibration.json").read_text())
        table = CalibrationTable({(m, u, float(b)): float(a) for m, u, b, a in rows})
        calibrated = lambda m, u, b: table[(m, u, b)]  # noqa: E731
    return prompts, vectors, calibrated


def run_config(cfg: SweepConfig, *, progress_bar: bool = True) -> pd.DataFrame | None:
    """Build (or reload) the vectors, run this process's batches, gather on rank 0.

    Returns the tidy DataFrame on rank 0 (``None`` on the other ranks).
    """
    import torch

    dist = _Dist(cpu=cfg.run.device is not None and torch.device(cfg.run.device).type == "cpu")
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
        device=None if cfg.device_map else (dist.device if dist.world > 1 else cfg.run.device),
        device_map=cfg.device_map,
        seed=cfg.run.seed,
    )
    ds = load_prism(cfg.data)
    vec_dir = out / "vectors"
    if dist.rank == 0:
        _prepare(cfg, model, ds, out, vec_dir, progress_bar=progress_bar)
    dist.barrier()
    # every rank reads rank 0's prompts and vectors, so all plan the same batches
    prompts, vectors, calibrated = _plan(cfg, out, vec_dir)
    conditions = load_conditions(vec_dir)
    cells = make_grid(prompts, list(vectors), cfg.alphas, cfg.gates, calibrated=calibrated)
    measure = standard_measures(ds.ground_truth, batch_size=cfg.run.batch_size)
    # before the run: as run_sweep names its parts
    salt = sweep_salt(model, vectors, measure, conditions)
    frame = run_sweep(
        model,
        cells,
        prompts,
        vectors,
        out,
        settings=cfg.settings,
        measure=measure,
        conditions=conditions,
        rank=dist.rank,
        world=dist.world,
        progress_bar=progress_bar,
    )
    if dist.world == 1:
        return frame
    dist.barrier()
    if dist.rank != 0:
        return None
    return gather(out, cells, cfg.settings, salt)


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
