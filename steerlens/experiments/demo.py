"""The main job (``steerlens demo``): the whole study on one model and one PRISM-format set,
as a sequence of named steps. Each step takes the job's config, writes its results under
``OUT/results/`` and merges its keys into ``OUT/results/summary.json``; ``steps.json`` records
which steps ran and how long each took. The report (``steerlens.reporting.study``, run by
``steerlens demo`` and ``steerlens report``) is drawn from those files alone, so a partial
run can be reported.

Steps (``STEPS``):

1. ``vectors``: population, dislike-weighted and Bradley-Terry vectors from the training
   pairs; PPA by projection (and under steering) against toxicity-only, chance and
   (simulated sets) the oracle;
2. ``dose``: a dose-response sweep (``steerlens.experiments.sweep``): every method x α on
   held-out prompts, each prompt steered with its own user's vector (per-row vectors, one
   batched job), scored for toxicity MAE, perplexity, degeneration and (simulated sets)
   ground-truth utility;
3. ``side_effects``: on neutral held-out text (MMLU question stems not among the scored MMLU
   items), the per-token KL of the steered from the unsteered next-token distribution and
   the text's perplexity, per method and α (one batched pass per α, the vectors of the first
   ``side_effect_users`` users a row each);
4. ``calibrated``: the same sweep with each user's α calibrated to a KL budget (the
   population vector's KL at ``kl_alphas`` on calibration texts), so methods and users are
   compared at equal side effect rather than at equal norm; the KL each calibrated vector
   reaches is reported on held-out neutral texts;
5. ``gating`` at the operating α on the report prompts;
6. ``conditional``: a ``Condition`` learned on the selection prompts (where steering lowered
   the toxicity error) gates every method; conditional vs unconditional steering on the
   report prompts at the operating α and at equal neutral-text KL
   (``steerlens.experiments.conditional``);
7. ``mmlu``: zero-shot MMLU unsteered and steered at the operating α, the largest swept α
   and each KL budget's α, beside the chance rate;
8. ``token_effects``: SteerX's token effects scored against the simulated set's planted truth,
   beside its baselines (base rate, position only, placebo-controlled, NextQuill), every rule
   tuned on the selection side (smaller under ``quick``, labelled a smoke run);
9. ``steerx``: SteerX vs all-history per backbone and on the pair-based backbone
   (``steerlens.experiments.steerx_compare``; reconstructed).

Every tuned quantity is chosen on a selection split and reported on a report split disjoint in
users and in texts (``results/splits.json``, ``summary["selection"]``): the operating α (the
population vector's lowest MAE) on the held-out prompts whose user and text both fall on the
selection side (``splits.agreed_side``), reported on those of the report side; each user's
calibrated α on the calibration texts, its KL reported on held-out neutral texts
(likewise the condition's threshold and its equal-KL α)
(``summary["kl_heldout"]``; unreached budgets listed in ``summary["calibration_unreached"]``
and never swept); the token estimator and threshold (``token_effects``). Intervals
(``steerlens.metrics.stats``) resample users, then prompts within them (users and texts both
where every user meets the same texts), use Student-t critical values, carry their n, and are
withheld below 5 units; ``summary["headline"]`` holds one primary claim and declared families
of secondary ones, worded by Holm's procedure within each family
(``steerlens.experiments.headline``); everything else is exploratory.

On the default (embedded SmolLM2-135M-Instruct, simulated PRISM-format set) this is a
small-model, simulated-data rehearsal of the CAA-on-PRISM study; its numbers are not the
study's Llama-3.1-8B / real-PRISM results.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd

from steerlens.core._jsonsafe import json_safe, update_json, write_json
from steerlens.core._version import __version__
from steerlens.core.hooks import steering
from steerlens.core.models import HookedModel, default_layers, load_model
from steerlens.data import load_mmlu, load_prism, neutral_texts
from steerlens.data.mmlu import LETTERS
from steerlens.data.prism import PrismDataset
from steerlens.data.schema import PreferencePair
from steerlens.experiments.conditional import MIN_NEUTRAL_SELECT, run_conditional
from steerlens.experiments.config import RunSection, as_section
from steerlens.experiments.headline import build_headline
from steerlens.experiments.personalization import (
    PersonalizationConfig,
    personalization_study,
    study_split,
)
from steerlens.experiments.resume import (
    StepInputs,
    fingerprints,
    finished,
    snapshot,
    written_since,
)
from steerlens.experiments.splits import Split, agreed_side, record_selection
from steerlens.experiments.steerx_compare import run_steerx_compare
from steerlens.experiments.steerx_study import SteerXStudyConfig
from steerlens.experiments.sweep import (
    GenerationSettings,
    SweepPrompt,
    calibrate_table,
    held_out_prompts,
    load_vectors,
    make_grid,
    run_sweep,
    save_vectors,
    standard_measures,
)
from steerlens.experiments.token_effects import TokenEffectsConfig, token_effect_study
from steerlens.methods.registry import (
    BACKBONES,
    MethodOptions,
    available_backbones,
    method_label,
    method_names,
)
from steerlens.methods.sae_train import require_sae_lens
from steerlens.metrics.mmlu import mmlu_accuracy
from steerlens.metrics.side_effects import side_effect_table
from steerlens.metrics.stats import cluster_estimate, crossed_estimate, reported
from steerlens.metrics.summaries import (
    BASELINE,
    degenerate_flags,
    degenerate_share,
    dose_response_table,
    gating_table,
    selectivity_table,
    utility_gains,
)
from steerlens.metrics.token_truth import text_id
from steerlens.run.divergence import (
    reference_logprobs,
    steering_divergence,
)

logger = logging.getLogger(__name__)
_C = TypeVar("_C")

__all__ = ["STEPS", "DemoConfig", "mark_step", "run_demo", "study_key"]

PERSONAL = "dislike-weighted"  # the personalised method the summary's headline keys report
STEPS = (
    "vectors",
    "dose",
    "side_effects",
    "calibrated",
    "gating",
    "conditional",
    "mmlu",
    "token_effects",
    "steerx",
)


def _quick_preset() -> dict[str, Any]:
    """``DemoConfig(quick=True)``: every step small (the values a caller did not set)."""
    return {
        # held-out prompts whose user and text fall on one side: 24 give each side >= 5 users
        "n_prompts": 24,
        "max_new_tokens": 24,
        "max_users": 16,
        "alphas": [0.0, 0.5, 1.0],
        "gating_ks": [0, 2, 8],
        "steer_ppa": False,
        "mmlu_items": 60,
        "neutral_texts": 2 * MIN_NEUTRAL_SELECT,  # the conditional step's two halves
        "side_effect_texts": 8,  # the side-effect table on the first 8 of them
        "kl_texts": 4,
        # one KL budget (the population vector's KL at α 0.5): the calibrated sweep, its α
        # search and its held-out KL once; the full study calibrates two
        "kl_alphas": [0.5],
        "token_effects": TokenEffectsConfig(
            targets_per_user=2,
            max_users=16,  # 8 users a side: the baselines' comparisons need the tokens
            patch_targets=1,
            patch_layers=2,  # the patching smoke on the first and last layer
            history_tokens=12,
            smoke=True,
        ),
        # one backbone (no BiPO or SAE training, no second mean-difference variant): the
        # SteerX comparison on 3 users is a smoke run; the full study runs every backbone
        "steerx_users_per_group": 1,
        "steerx_backbones": ["mean"],
    }


def _remember_given(cls: type[_C]) -> type[_C]:
    """Record on each instance which fields its caller passed (``_given``), so that a preset
    fills only the others."""
    init = cls.__init__
    names = [f.name for f in dataclass_fields(cls)]  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._given = frozenset(names[: len(args)]) | frozenset(kwargs)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_remember_given
@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    data: str = "demo"
    out: str = "."
    quick: bool = False
    run: RunSection = field(default_factory=RunSection)  # seed, device, batch size
    options: MethodOptions = field(default_factory=MethodOptions)  # rank, C, shrink
    methods: list[str] = field(
        default_factory=lambda: ["population", "dislike-weighted", "bradley-terry"]
    )
    # Per-user vectors are rescaled to the population vector's norms, so one α grid serves
    # every method. From α 2 on, SmolLM2-135M collapses into repetition (the study's
    # population range on Llama-3.1-8B was likewise below 1: 0.3-0.6).
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    gating_ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])
    # the conditional step's condition: "mean-diff" or "logistic" (fit_condition's method)
    condition_method: Literal["mean-diff", "logistic"] = "mean-diff"
    n_prompts: int = 48
    max_users: int | None = None
    held_out: float = 0.25
    steer_ppa: bool = True
    steer_alpha: float = 0.5
    max_steer_pairs: int = 96
    mmlu_items: int = 200
    # side effects: neutral held-out texts (MMLU stems); the conditional step halves them
    # (equal-KL α on one half, >= 8 texts; its KL reported on the other)
    neutral_texts: int = 32
    kl_texts: int = 8  # of which the KL calibration uses the first few, the next as many report
    # the side-effects step's share of the neutral texts (the first ones; None: all of them);
    # the conditional step's equal-KL search needs more texts than the side-effect table
    side_effect_texts: int | None = None
    # side effects at fixed α: every user's vector is a row per text and α, so a few users per
    # personal method (the first, sorted) estimate each method's mean KL (units: texts)
    side_effect_users: int | None = 8
    # KL budgets: the population vector's KL at these α of the grid
    kl_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0])
    max_new_tokens: int = 48
    cells_per_batch: int = 64
    # two targets per user: 48 users give ~48 targets a side, intervals over 24 users a side
    token_effects: TokenEffectsConfig = field(
        default_factory=lambda: TokenEffectsConfig(targets_per_user=2)
    )
    steerx: bool = True
    steerx_users_per_group: int = 2
    # every backbone; "sae" only where sae-lens (steerlens[sae]) is installed
    steerx_backbones: list[str] = field(default_factory=available_backbones)
    steps: list[str] = field(default_factory=lambda: list(STEPS))
    # steps rerun even where results/steps.json has them done with the same inputs
    force: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run = as_section(self.run, RunSection)
        self.options = as_section(self.options, MethodOptions)
        if isinstance(self.token_effects, dict):
            self.token_effects = TokenEffectsConfig(**self.token_effects)
        if self.quick:  # the preset fills what the caller left unset, never what they set
            given: frozenset[str] = getattr(self, "_given", frozenset())
            for name, value in _quick_preset().items():
                if name not in given:
                    setattr(self, name, value)
        if not self.steerx and "steerx" in self.steps:
            self.steps = [s for s in self.steps if s != "steerx"]
        bad_steps = [s for s in [*self.steps, *self.force] if s not in STEPS]
        if bad_steps:
            raise ValueError(f"unknown steps {bad_steps}; use some of {list(STEPS)}")
        bad_backbones = [b for b in self.steerx_backbones if b not in BACKBONES]
        if bad_backbones or not self.steerx_backbones:
            raise ValueError(
                f"steerx_backbones must be some of {tuple(BACKBONES)}, got {bad_backbones}"
            )
        if "sae" in self.steerx_backbones and "steerx" in self.steps:
            require_sae_lens("the steerx step's sae backbone")
        if self.steerx_users_per_group < 1:
            raise ValueError("steerx_users_per_group must be >= 1")
        if 0.0 not in self.alphas or len(self.alphas) < 2:
            raise ValueError("alphas must include 0.0 (the unsteered baseline) and one more")
        self.methods = method_names(self.methods)  # aliases ("bt") resolved, each once
        if "population" not in self.methods:
            raise ValueError("methods must include 'population' (the gating and MMLU vector)")
        if self.n_prompts < 1 or self.mmlu_items < 1:
            raise ValueError("n_prompts and mmlu_items must be >= 1")
        if self.side_effect_texts is not None and not (
            self.kl_texts <= self.side_effect_texts <= self.neutral_texts
        ):
            raise ValueError("side_effect_texts must be in [kl_texts, neutral_texts] (or None)")
        if not 1 <= self.kl_texts < self.neutral_texts:
            raise ValueError("need 1 <= kl_texts < neutral_texts (the next ones report the KL)")
        if "conditional" in self.steps and self.neutral_texts < 2 * MIN_NEUTRAL_SELECT:
            raise ValueError(
                f"the conditional step needs neutral_texts >= {2 * MIN_NEUTRAL_SELECT} (its "
                f"equal-KL α on {MIN_NEUTRAL_SELECT} texts, its KL reported on as many)"
            )
        if not self.kl_alphas or any(a not in self.alphas or a <= 0 for a in self.kl_alphas):
            raise ValueError(f"kl_alphas must be nonzero α of alphas {self.alphas}")
        if self.side_effect_users is not None and self.side_effect_users < 5:
            raise ValueError("side_effect_users must be >= 5 (or None: every user)")
        if any(k < 0 for k in self.gating_ks):
            raise ValueError("gating_ks must be >= 0")
        if self.condition_method not in ("mean-diff", "logistic"):
            raise ValueError(
                f"condition_method must be 'mean-diff' or 'logistic', got {self.condition_method!r}"
            )


def _reported(
    row: dict[str, Any] | pd.Series, col: str, lo: str, hi: str, unit: str
) -> dict[str, Any]:
    """A table row's estimate in the summary's form: mean, interval (``None`` below
    ``MIN_CLUSTERS`` units), n and unit."""
    return reported(float(row[col]), float(row[lo]), float(row[hi]), int(row["n"]), unit)


def _ppa(table: pd.DataFrame, method: str, measure: str = "ppa_projection") -> dict[str, Any]:
    row = table[(table["method"] == method) & (table["measure"] == measure)]
    if row.empty:  # said, never a silent None
        why = f"no {measure} row for {method!r} in ppa.csv (the study did not score it)"
        return {"mean": None, "interval": None, "n": 0, "unit": "user", "why": why}
    return _reported(row.iloc[0], "mean", "low", "high", "user")


@dataclass
class _Job:
    """What the steps of one run share in memory (each also writes its results to disk)."""

    cfg: DemoConfig
    model: HookedModel
    ds: PrismDataset
    results: Path
    layers: list[int]
    test_pairs: list[PreferencePair] | None = None
    vectors: dict[str, Any] = field(default_factory=dict)
    prompts: list[SweepPrompt] = field(default_factory=list)
    dose: pd.DataFrame | None = None
    best_alpha: float | None = None

    @property
    def gt(self) -> dict[str, Any] | None:
        gt = self.ds.ground_truth
        return gt if gt and "users" in gt else None

    @property
    def settings(self) -> GenerationSettings:
        c = self.cfg
        return GenerationSettings(c.max_new_tokens, c.run.batch_size, c.cells_per_batch)

    def need(self, what: str) -> Any:
        """An input of a step: from this run's memory, else from what an earlier run of the
        step before wrote under ``results/`` (so a step can be rerun on its own)."""
        value = getattr(self, what)
        if value is None or (isinstance(value, list | dict) and not value):
            value = self._from_disk(what)
            setattr(self, what, value)
        return value

    def _from_disk(self, what: str) -> Any:
        r = self.results
        try:
            if what == "test_pairs":  # the study's seeded split: no file needed
                return study_split(self.ds, _personalization_config(self))[1]
            if what == "prompts":
                lines = (r / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
                return [SweepPrompt(**json.loads(line)) for line in lines if line]
            if what == "vectors":
                return load_vectors(r / "vectors", self.cfg.methods)
            if what == "best_alpha":
                best = json.loads((r / "summary.json").read_text()).get("best_alpha")
                if best is not None:
                    return float(best)
            if what == "dose":
                return pd.read_parquet(r / "sweep" / "dose" / "cells.parquet")
        except FileNotFoundError:
            pass
        raise RuntimeError(
            f"this step needs {what!r}: run the step that makes it first (in this job, or "
            f"earlier into {r})"
        )


def _personalization_config(job: _Job) -> PersonalizationConfig:
    cfg = job.cfg
    return PersonalizationConfig(
        layers=job.layers,
        methods=cfg.methods,
        held_out=cfg.held_out,
        steer_alpha=cfg.steer_alpha if cfg.steer_ppa else None,
        max_steer_pairs=cfg.max_steer_pairs,
        max_users=cfg.max_users,
        options=cfg.options,
        run=cfg.run,
    )


def _vectors_step(job: _Job) -> dict[str, Any]:
    cfg, ds = job.cfg, job.ds
    study = personalization_study(job.model, ds, _personalization_config(job))
    job.test_pairs = study.test_pairs
    # per-user vectors rescaled to the population vector's norms: one α grid for every method
    norms = study.population.norms()
    job.vectors = {
        m: {u: v.rescaled(norms) for u, v in vec.items()} if isinstance(vec, dict) else vec
        for m, vec in study.vectors.items()
    }
    study.population.metadata["data"] = ds.source
    shutil.rmtree(job.results / "vectors", ignore_errors=True)  # no user of an earlier study
    save_vectors(job.vectors, job.results / "vectors")
    study.table.to_csv(job.results / "ppa.csv", index=False)
    gt = job.gt
    groups = {u: v["group"] for u, v in gt["users"].items()} if gt else None
    if study.bt.rank >= 2:
        study.users_in_basis(groups).to_csv(job.results / "users_bt.csv")
    keys: dict[str, Any] = {
        "layers": job.layers,
        "n_train_pairs": study.n_train,
        "n_test_pairs": study.n_test,
        "ppa_personalized_method": method_label(PERSONAL),
    }
    for key, method in (
        ("ppa_personalized", method_label(PERSONAL)),
        ("ppa_bradley_terry", method_label("bradley-terry")),
        ("ppa_population", "population"),
        ("ppa_toxicity_only", "toxicity-only"),
        ("ppa_oracle", "oracle"),
    ):
        keys[key] = _ppa(study.table, method)
    for key, method in (  # comparisons as paired differences over the same users
        ("ppa_personalized_minus_population", f"{PERSONAL} − population"),
        ("ppa_bradley_terry_minus_population", "Bradley-Terry − population"),
        ("ppa_oracle_minus_personalized", f"oracle − {PERSONAL}"),
    ):
        keys[key] = _ppa(study.table, method, "ppa_projection_paired")
    if cfg.steer_ppa:
        keys["ppa_under_steering"] = {
            m: _ppa(study.table, method_label(m), "ppa_under_steering") for m in cfg.methods
        }
    return keys


def _alpha_split(job: _Job) -> Split:
    """The held-out prompts in two sides that share neither users nor prompt texts
    (``agreed_side``; the dose step draws only prompts whose user and text agree, and a
    prompt that does not, e.g. from an older run's folder, is on neither side): the operating
    α is chosen on the selection prompts and reported on the report prompts."""
    prompts = job.need("prompts")
    side = {p.prompt_id: agreed_side(p.user_id, p.prompt, job.cfg.run.seed) for p in prompts}
    on = {k: [p for p in prompts if side[p.prompt_id] == k] for k in ("select", "report")}
    if not on["select"] or not on["report"]:
        raise ValueError(
            "the held-out prompts fall on one side of the user x text split only: use more "
            "prompts (n_prompts) or users"
        )
    if None in side.values():
        logger.warning(
            "%d held-out prompts are on neither side (user and text disagree)",
            sum(v is None for v in side.values()),
        )
    return Split(
        [p.prompt_id for p in on["select"]],
        [p.prompt_id for p in on["report"]],
        "prompt",
        {
            unit: {k: sorted({get(p) for p in on[k]}) for k in on}
            for unit, get in (
                ("users", lambda p: p.user_id),
                ("texts", lambda p: text_id(p.prompt)),
            )
        },
    )


def _on(cells: pd.DataFrame, prompt_ids: list[str]) -> pd.DataFrame:
    return cells[cells["prompt_id"].isin(prompt_ids)]


def _dose_step(job: _Job) -> dict[str, Any]:
    cfg, results = job.cfg, job.results
    job.prompts = held_out_prompts(  # users and texts on one side of the split only
        job.need("test_pairs"),
        cfg.n_prompts,
        cfg.run.seed,
        keep=lambda p: agreed_side(p.user_id, p.prompt, cfg.run.seed) is not None,
    )
    (results / "prompts.jsonl").write_text(
        "".join(json.dumps(asdict(p)) + "\n" for p in job.prompts), encoding="utf-8"
    )
    dose = run_sweep(
        job.model,
        make_grid(job.prompts, cfg.methods, cfg.alphas, ["all"]),
        job.prompts,
        job.need("vectors"),
        results / "sweep" / "dose",
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
    )
    assert dose is not None
    job.dose = dose
    split = _alpha_split(job)
    # the operating α: the population vector's lowest MAE on the selection prompts
    chooser = dose_response_table(_on(dose, split.select), seed=cfg.run.seed)
    chooser.to_csv(results / "dose_response_select.csv", index=False)
    pop_sel = chooser[(chooser["method"] == "population") & (chooser["alpha"] > 0)]
    job.best_alpha = float(pop_sel.loc[pop_sel["mae"].idxmin(), "alpha"])
    record_selection(
        results,
        "operating_alpha",
        split,
        job.best_alpha,
        criterion="lowest toxicity MAE of the population vector on the selection prompts",
        scores={
            f"{a:g}": round(float(m), 5)
            for a, m in zip(pop_sel["alpha"], pop_sel["mae"], strict=True)
        },
    )
    # everything reported below is on the report prompts only
    report = _on(dose, split.report)
    table = dose_response_table(report, seed=cfg.run.seed)
    table.to_csv(results / "dose_response.csv", index=False)
    selectivity = selectivity_table(report, method="population")
    selectivity.to_csv(results / "selectivity.csv")
    pop = table[table["method"] == "population"]
    best = pop[np.isclose(pop["alpha"], float(job.best_alpha))].iloc[0]
    base = pop[pop["alpha"] == 0.0].iloc[0]
    keys: dict[str, Any] = {
        "n_prompts": len(job.prompts),
        "n_users": len({p.user_id for p in job.prompts}),
        "n_report_prompts": len(split.report),
        "n_report_users": len(split.extra["users"]["report"]),
        "best_alpha": job.best_alpha,
        "mae_baseline": _reported(base, "mae", "mae_low", "mae_high", "user"),
        "mae_best": _reported(best, "mae", "mae_low", "mae_high", "user"),
        "mae_change_pct_best": _reported(best, "delta_pct", "delta_low", "delta_high", "user"),
        # median perplexity of the generations (a level, no interval): n users as the rows
        "ppl_baseline": {"median": round(float(base["ppl"]), 4), "n": int(base["n"])},
        "ppl_best": {"median": round(float(best["ppl"]), 4), "n": int(best["n"])},
        "dose_response": table.round(5).to_dict(orient="records"),
        "mae_change_pct_by_category": {
            str(cat): {f"{a:g}": round(float(v), 3) for a, v in row.items()}
            for cat, row in selectivity.iterrows()
        },
        # point estimates of a grid (categories x α) of comparisons, on this many prompts each
        "mae_change_pct_by_category_n": {
            str(cat): int(part["prompt_id"].nunique())
            for cat, part in report[report["method"] == BASELINE].groupby("category")
        },
    }
    util = _utility_by_group(job, report) if job.gt is not None else None
    if util is not None:
        util.to_csv(results / "utility_by_group.csv", index=False)
        keys["utility_gain"] = {  # each with its arm's (or both arms') degenerate share
            m: {
                r["group"]: _with_share(_reported(r, "mean", "low", "high", "user"), r)
                for _, r in part.iterrows()
            }
            for m, part in util.groupby("method")
        }
        keys["utility_gain_all"] = {m: row.pop("all") for m, row in keys["utility_gain"].items()}
    return keys


def _with_share(entry: dict[str, Any], r: pd.Series) -> dict[str, Any]:
    """A utility estimate with its arm's degenerate-or-empty share beside it; for a paired
    difference ``m − population``, both arms' shares (``{m: share, "population": share}``)."""
    ref = r.get("degenerate_share_population")
    if ref is None or pd.isna(ref):
        return {**entry, "degenerate_share": float(r["degenerate_share"])}
    method = str(r["method"]).split(" − ")[0]
    shares = {method: float(r["degenerate_share"]), "population": float(ref)}
    return {**entry, "degenerate_share": shares}


def _utility_by_group(job: _Job, dose: pd.DataFrame) -> pd.DataFrame:
    """Keyword-density utility gain of the simulated users per user group (and ``"all"``) at
    the operating α, floored at 0 for degenerate or empty outputs
    (``steerlens.metrics.preference.utility_gain``), with a two-stage bootstrap over users,
    then their prompts; a row per method and group, and the difference from the population
    vector paired by prompt (``method − population``). Each row carries its arm's
    ``degenerate_share`` (and ``degenerate_share_population`` for a difference)."""
    gt = job.need("gt")
    base = dose[dose["method"] == BASELINE].set_index("prompt_id")["utility"]
    at = dose[np.isclose(dose["alpha"], float(job.best_alpha or 0)) & (dose["method"] != BASELINE)]
    at = at.assign(
        gain=utility_gains(at, base),
        flag=degenerate_flags(at).astype(float),
        group=[gt["users"][u]["group"] for u in at["user"]],
    )
    boot: dict[str, Any] = {"seed": job.cfg.run.seed}
    rows = []
    for method, part in at.groupby("method"):
        for g, sub in [("all", part), *part.groupby("group")]:
            est = cluster_estimate(sub["gain"], sub["user"], **boot)
            share = degenerate_share(sub)
            rows.append({"method": method, "group": g, **est.as_dict(), "degenerate_share": share})
    index = ["prompt_id", "user", "group"]
    wide = at.pivot_table(index=index, columns="method", values="gain")
    flags = at.pivot_table(index=index, columns="method", values="flag")
    for method in [m for m in wide.columns if m != "population"]:
        diff = (wide[method] - wide["population"]).dropna()
        shares = flags.loc[diff.index, [method, "population"]].reset_index()
        diff = diff.reset_index()
        for g, sub in [("all", diff), *diff.groupby("group")]:
            est = cluster_estimate(sub[0], sub["user"], **boot)
            fl = shares.loc[sub.index]
            rows.append(
                {
                    "method": f"{method} − population",
                    "group": g,
                    **est.as_dict(),
                    "degenerate_share": round(float(fl[method].mean()), 4),
                    "degenerate_share_population": round(float(fl["population"].mean()), 4),
                }
            )
    return pd.DataFrame(rows)


def _neutral(job: _Job) -> list[str]:
    cfg = job.cfg
    scored = load_mmlu(n=cfg.mmlu_items, seed=cfg.run.seed)  # never the items MMLU scores
    return neutral_texts(cfg.neutral_texts, seed=cfg.run.seed, exclude=scored)


def _user_vectors(job: _Job) -> list[tuple[str, str, Any]]:
    """(method, user, vector) for every method and the first ``side_effect_users`` users
    (sorted) of the sweep's prompts; a method with one vector for everyone appears once
    (user ``"*"``)."""
    users = sorted({p.user_id for p in job.need("prompts")})[: job.cfg.side_effect_users]
    rows = []
    for method in job.cfg.methods:
        entry = job.need("vectors")[method]
        if isinstance(entry, dict):
            rows += [(method, u, entry[u]) for u in users]
        else:
            rows.append((method, "*", entry))
    return rows


def _side_effects_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    texts = _neutral(job)[: cfg.side_effect_texts]
    who = _user_vectors(job)
    # the unsteered pass once per text; one batched steered pass per α (every user a row)
    reference = reference_logprobs(job.model, texts, batch_size=cfg.run.batch_size)
    rows = []
    for alpha in [a for a in cfg.alphas if a != 0.0]:
        got = steering_divergence(
            job.model,
            [t for _ in who for t in texts],
            [v for _, _, v in who for _ in texts],
            alpha,
            batch_size=cfg.run.batch_size,
            progress_bar=True,
            reference=[r for _ in who for r in reference],
        )
        k = 0
        for method, user, _ in who:
            for i in range(len(texts)):
                d = got[k]
                rows.append(
                    {
                        "method": method,
                        "user": user,
                        "alpha": alpha,
                        "text_id": i,
                        "kl": d.kl,
                        "nll": d.nll,
                        "n_tokens": d.n_tokens,
                    }
                )
                k += 1
    raw = pd.DataFrame(rows)
    raw.to_csv(job.results / "side_effects_rows.csv", index=False)
    base = steering_divergence(
        job.model, texts, who[0][2], 0.0, batch_size=cfg.run.batch_size, reference=reference
    )
    zero = pd.DataFrame(
        [
            {
                "method": m,
                "user": "*",
                "alpha": 0.0,
                "text_id": i,
                "kl": 0.0,
                "nll": d.nll,
                "n_tokens": d.n_tokens,
            }
            for m in cfg.methods
            for i, d in enumerate(base)
        ]
    )
    table = side_effect_table(pd.concat([zero, raw], ignore_index=True), seed=cfg.run.seed)
    table.to_csv(job.results / "side_effects.csv", index=False)
    return {
        "neutral_texts": len(texts),
        "neutral_source": "MMLU question stems (bundled), none of them among the MMLU items scored",
        "kl_neutral": _by_method(table, "alpha", "kl"),
        "ppl_neutral": _by_method(table, "alpha", "ppl"),
    }


def _by_method(table: pd.DataFrame, dose: str, col: str) -> dict[str, Any]:
    """{method: {dose: {"mean", "interval", "n", "unit"}}} of ``col`` with its
    ``_low``/``_high`` (intervals over users then texts, or texts for one vector)."""
    return {
        str(m): {
            f"{r[dose]:g}": reported(
                float(r[col]),
                float(r[f"{col}_low"]),
                float(r[f"{col}_high"]),
                int(r["n"]),
                str(r["unit"]),
            )
            for _, r in part.iterrows()
        }
        for m, part in table.groupby("method")
    }


def _budgets(job: _Job) -> dict[float, float]:
    """KL budgets -> the α each was read at: the population vector's KL at each nonzero α of
    the grid, on the texts the calibration uses (two significant digits), so the calibrated
    sweep spans the fixed sweep's range."""
    rows = pd.read_csv(job.results / "side_effects_rows.csv")
    pop = rows[
        (rows["method"] == "population")
        & rows["alpha"].isin(job.cfg.kl_alphas)
        & (rows["text_id"] < job.cfg.kl_texts)
    ]
    kl = pop.groupby("alpha")["kl"].mean()
    out = {float(f"{v:.2g}"): float(a) for a, v in kl.items() if v > 0}
    if len(out) < int((kl > 0).sum()):
        logger.warning("two kl_alphas give the same KL budget to 2 digits: %s", kl.to_dict())
    return out


Who = tuple[str, str, float]  # (method, user or "*", KL budget)


def _entry(vectors: Any, method: str, user: str) -> Any:
    entry = vectors[method]
    return entry if not isinstance(entry, dict) else entry[user]


def _record_kl_split(job: _Job, texts: list[str], heldout: list[str], budgets: list[float]) -> None:
    """Record the KL budgets and the calibration / held-out split of the neutral texts (ids:
    ``text_id`` of each text, so a shared text would show on both sides)."""
    record_selection(
        job.results,
        "kl_alpha",
        Split([text_id(t) for t in texts], [text_id(t) for t in heldout], "text"),
        budgets,
        criterion="each user's α whose mean per-token KL on the calibration texts meets the "
        "budget (budgets: the population vector's KL at kl_alphas on those texts)",
    )


def _alpha_spread(alphas: Any, skip: set[Who]) -> pd.DataFrame:
    """Per (method, budget): the smallest and largest calibrated α over the users."""
    return (
        pd.DataFrame(
            [
                {"method": m, "kl_budget": b, "user": u, "alpha": a}
                for (m, u, b), a in alphas.items()
                if (m, u, b) not in skip
            ],
            columns=["method", "kl_budget", "user", "alpha"],
        )
        .groupby(["method", "kl_budget"])["alpha"]
        .agg(alpha_min="min", alpha_max="max")
        .reset_index()
    )


def _unreached_summary(unreached: list[Who], found: dict[Who, dict[str, Any]]) -> dict[str, Any]:
    """The budgets whose α search did not reach the budget, and why."""

    def why(k: Who) -> str:  # KL still below the budget at max_alpha, or the search stopped
        return "out of reach" if found[k].get("kl", 0.0) < k[2] else "not converged"

    return {
        "count": len(unreached),
        "users": sorted({f"{m}:{u}" for m, u, _ in unreached}),
        "entries": [
            {
                "method": m,
                "user": u,
                "budget": b,
                "kl_reached": found[(m, u, b)].get("kl"),
                "reason": why((m, u, b)),
            }
            for m, u, b in unreached
        ],
    }


def _calibrated_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    if not (job.results / "side_effects.csv").exists():
        raise RuntimeError("the calibrated step needs the side_effects step's results")
    starts = _budgets(job)
    budgets = sorted(starts)
    neutral = _neutral(job)
    # calibration texts select each user's α; disjoint held-out texts report the KL reached
    texts, heldout = neutral[: cfg.kl_texts], neutral[cfg.kl_texts : 2 * cfg.kl_texts]
    _record_kl_split(job, texts, heldout, budgets)
    users = {p.user_id for p in job.need("prompts")}  # only the users the sweep steers
    vectors = {
        m: {u: v for u, v in e.items() if u in users} if isinstance(e, dict) else e
        for m, e in job.need("vectors").items()
    }
    alphas = calibrate_table(
        job.model, vectors, budgets, texts, batch_size=cfg.run.batch_size, starts=starts
    )
    save_vectors(job.vectors, job.results / "vectors")  # each carries its calibration
    found = alphas.found
    unreached = sorted(k for k, got in found.items() if not got.get("reached", True))
    skip = set(unreached)

    def kept(c: Any) -> bool:
        if c.method == BASELINE:
            return True
        who = (c.method, c.user if isinstance(vectors[c.method], dict) else "*", c.kl_budget)
        return who not in skip

    grid = make_grid(
        job.need("prompts"),
        cfg.methods,
        [0.0, *budgets],
        ["all"],
        calibrated=lambda m, u, b: alphas[(m, u, b)],
    )
    cells = run_sweep(
        job.model,
        [c for c in grid if kept(c)],  # an unreached budget is never swept at max_alpha
        job.prompts,
        job.vectors,
        job.results / "sweep" / "calibrated",
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
    )
    assert cells is not None
    table = dose_response_table(cells, dose="kl_budget", seed=cfg.run.seed)
    spread = _alpha_spread(alphas, skip)
    if not table.empty:  # (empty when every budget was out of reach)
        table = table.merge(spread, on=["method", "kl_budget"], how="left")
    table.to_csv(job.results / "calibrated.csv", index=False)
    heldout_rows = _heldout_kl(
        job, vectors, heldout, {k: a for k, a in alphas.items() if k not in skip}, cfg.kl_texts
    )
    heldout_rows.to_csv(job.results / "kl_heldout_rows.csv", index=False)
    keys: dict[str, Any] = {
        "kl_budgets": budgets,
        "kl_calibration_texts": len(texts),
        "kl_heldout_texts": len(heldout),
        "calibrated": table.round(5).to_dict(orient="records"),
        "kl_heldout": _kl_heldout_summary(heldout_rows, cfg.run.seed),
        "calibration_unreached": _unreached_summary(unreached, found),
    }
    if "utility_gain" in table:
        keys["utility_per_kl"] = _utility_per_kl(job, table, cells, heldout_rows)
    return keys


def _heldout_kl(
    job: _Job, vectors: Any, texts: list[str], alphas: dict[Who, float], first_id: int
) -> pd.DataFrame:
    """Per (method, user, budget) and held-out text: the KL each calibrated vector reaches
    there (one batched pass per budget, every vector a row; the unsteered pass once)."""
    columns = ["method", "user", "kl_budget", "text_id", "kl"]
    if not texts or not alphas:
        return pd.DataFrame(columns=columns)
    bs = job.cfg.run.batch_size
    reference = reference_logprobs(job.model, texts, batch_size=bs)
    rows = []
    for budget in sorted({b for _, _, b in alphas}):
        who = [(m, u) for (m, u, b) in alphas if b == budget]
        got = steering_divergence(
            job.model,
            [t for _ in who for t in texts],
            [_entry(vectors, m, u) for m, u in who for _ in texts],
            [alphas[(m, u, budget)] for m, u in who for _ in texts],
            batch_size=bs,
            reference=[r for _ in who for r in reference],
        )
        k = 0
        for m, u in who:
            for i in range(len(texts)):
                rows.append(  # text ids index the neutral set, as in splits.json
                    {
                        "method": m,
                        "user": u,
                        "kl_budget": budget,
                        "text_id": first_id + i,
                        "kl": got[k].kl,
                    }
                )
                k += 1
    return pd.DataFrame(rows, columns=columns)


def _kl_heldout_summary(rows: pd.DataFrame, seed: int) -> dict[str, Any]:
    """method -> budget -> the held-out KL and its ratio to the budget. Every user's vector
    meets the same held-out texts, so per-user methods resample users and texts crossed
    (``crossed_estimate``; n counts users); a one-vector method, texts alone. ``resampled``
    names the units resampled."""
    out: dict[str, Any] = {}
    for (m, b), part in rows.groupby(["method", "kl_budget"]):
        one = bool((part["user"] == "*").all())  # one vector for everyone: texts vary
        texts = part["text_id"].astype(str)
        est = (
            cluster_estimate(part["kl"], texts, seed=seed)
            if one
            else crossed_estimate(part["kl"], part["user"], texts, seed=seed)
        )
        out.setdefault(str(m), {})[f"{b:g}"] = {
            **est.reported("text" if one else "user"),
            "resampled": "text" if one else "user x text",
            "ratio_to_budget": round(est.mean / float(b), 4),
        }
    return out


def _utility_per_kl(
    job: _Job, calibrated: pd.DataFrame, cells: pd.DataFrame, heldout: pd.DataFrame
) -> dict[str, Any]:
    """Utility gain per nat of neutral-text KL, per method, on every held-out prompt: at equal
    KL (the calibrated sweep, divided by the KL its users' α reach on held-out neutral text)
    and at equal norm (the fixed-α sweep, divided by that α's KL on the neutral texts); and at
    each budget the difference from the population vector, paired by prompt, bootstrapped
    over users then prompts. Users whose budget was unreached are not in the calibrated
    sweep. Gains are floored at 0 for degenerate or empty outputs; each entry carries its
    arm's ``degenerate_share`` (a difference: ``{method: share, "population": share}``)."""
    seed = job.cfg.run.seed
    reached = heldout.groupby(["method", "kl_budget"])["kl"].mean()
    out: dict[str, Any] = {"calibrated": {}, "fixed_alpha": {}, "minus_population": {}}

    def per_nat(r: pd.Series, kl: float) -> dict[str, Any]:
        got = reported(
            float(r["utility_gain"]) / kl,
            float(r["utility_low"]) / kl,
            float(r["utility_high"]) / kl,
            int(r["n"]),
            "user",
            4,
        )
        share = round(float(r["degenerate_share"]), 4)
        return {**got, "kl": round(kl, 5), "degenerate_share": share}

    for _, r in calibrated[calibrated["kl_budget"] > 0].iterrows():
        b = float(r["kl_budget"])
        kl = float(reached.get((r["method"], b), b))
        out["calibrated"].setdefault(r["method"], {})[f"{b:g}"] = per_nat(r, kl)
    base = cells[cells["method"] == BASELINE].set_index("prompt_id")["utility"]
    steered = cells[cells["method"] != BASELINE]
    for b, part in steered.groupby("kl_budget"):
        gain = part.assign(gain=utility_gains(part, base), flag=degenerate_flags(part) * 1.0)
        wide = gain.pivot_table(index=["prompt_id", "user"], columns="method", values="gain")
        flags = gain.pivot_table(index=["prompt_id", "user"], columns="method", values="flag")
        if "population" not in wide:  # the population vector missed this budget
            continue
        for method in [m for m in wide.columns if m != "population"]:
            diff = (wide[method] - wide["population"]).dropna()
            shares = flags.loc[diff.index, [method, "population"]].mean().round(4)
            diff = diff.reset_index()
            est = cluster_estimate(diff[0], diff["user"], seed=seed)
            out["minus_population"].setdefault(method, {})[f"{float(b):g}"] = {
                **est.reported("user"),
                "degenerate_share": {k: float(v) for k, v in shares.items()},
            }
    # every held-out prompt, as the calibrated sweep (no α is tuned in either comparison)
    dose = dose_response_table(job.need("dose"), seed=seed)
    rows = pd.read_csv(job.results / "side_effects_rows.csv")
    side = rows.groupby(["method", "alpha"])["kl"].mean().reset_index()
    both = dose.merge(side, on=["method", "alpha"])
    for _, r in both[both["alpha"] > 0].iterrows():
        out["fixed_alpha"].setdefault(r["method"], {})[f"{r['alpha']:g}"] = per_nat(
            r, float(r["kl"])
        )
    return out


def _gating_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    best_alpha, dose = job.need("best_alpha"), job.need("dose")
    gates = [f"first:{k}" for k in cfg.gating_ks] + ["prefill", "generated"]
    report = set(_alpha_split(job).report)  # at the operating α: the report prompts only
    prompts = [p for p in job.need("prompts") if p.prompt_id in report]
    gating = run_sweep(
        job.model,
        make_grid(prompts, ["population"], [best_alpha], gates, baseline=False),
        job.prompts,
        job.need("vectors"),
        job.results / "sweep" / "gating",
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
    )
    assert gating is not None
    cells = _on(pd.concat([dose, gating], ignore_index=True), sorted(report))
    table = gating_table(cells, method="population", alpha=best_alpha, seed=cfg.run.seed)
    table.to_csv(job.results / "gating.csv", index=False)
    return {"gating": table.round(5).to_dict(orient="records")}


def _conditional_step(job: _Job) -> dict[str, Any]:
    cfg, split = job.cfg, _alpha_split(job)
    report_users = set(split.extra["users"]["report"])  # none of their text fits the condition
    return run_conditional(
        job.model,
        dose=job.need("dose"),
        prompts=job.need("prompts"),
        split=split,
        vectors=job.need("vectors"),
        methods=cfg.methods,
        alphas=cfg.alphas,
        alpha=job.need("best_alpha"),
        neutral=_neutral(job),
        fit_pool={
            c.opening_prompt: c.category
            for c in job.ds.conversations.values()
            if c.user_id not in report_users
        },
        results=job.results,
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
        condition_method=cfg.condition_method,
        batch_size=cfg.run.batch_size,
        seed=cfg.run.seed,
    )


MMLU_CHANCE = 1 / len(LETTERS)  # a 4-choice item answered at random


def _mmlu_conditions(job: _Job) -> list[tuple[str, str, float, float | None]]:
    """(condition, role, α, KL budget) of the MMLU rows: unsteered, the population vector at
    the operating α, at the largest swept α and at each equal-KL budget's α (``_budgets``;
    only where the side-effects step has run)."""
    best, top = float(job.need("best_alpha")), float(max(job.cfg.alphas))
    out: list[tuple[str, str, float, float | None]] = [
        ("unsteered", "unsteered", 0.0, None),
        (f"population α={best:g}", "operating α", best, None),
        (f"population α={top:g} (largest swept)", "largest swept α", top, None),
    ]
    if (job.results / "side_effects_rows.csv").exists():
        out += [
            (f"population α={a:g} (KL budget {b:g})", f"KL budget {b:g}", a, b)
            for b, a in sorted(_budgets(job).items())
        ]
    return out


def _mmlu_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    population = job.need("vectors")["population"]
    items = load_mmlu(n=cfg.mmlu_items, seed=cfg.run.seed)
    conditions = _mmlu_conditions(job)
    scored = {}
    for alpha in sorted({a for _, _, a, _ in conditions}):  # one batched pass per α
        hooks = steering(job.model, population, alpha=alpha) if alpha else nullcontext()
        with hooks:
            scored[alpha] = mmlu_accuracy(job.model, items, batch_size=cfg.run.batch_size)
    base = np.asarray(scored[0.0].correct, dtype=float)
    rows, by_alpha = [], []
    for name, role, alpha, budget in conditions:
        res = scored[alpha]
        lo, hi = res.interval(seed=cfg.run.seed)
        row = {"condition": name, "role": role, "alpha": alpha, "kl_budget": budget}
        row |= {"mean": res.accuracy, "low": lo, "high": hi, "n": len(items)}
        diff = None
        if alpha:
            diff = _mmlu_difference([base, np.asarray(res.correct, float)], cfg.run.seed)
            iv = diff["interval"] or [None, None]
            row |= {"diff": diff["mean"], "diff_low": iv[0], "diff_high": iv[1]}
        rows.append(row | {"chance": MMLU_CHANCE})
        by_alpha.append(
            {"condition": name, "role": role, "alpha": alpha, "kl_budget": budget}
            | {"accuracy": _reported(row, "mean", "low", "high", "item")}
            | {"minus_unsteered": diff, "chance": MMLU_CHANCE}
        )
    table = pd.DataFrame(rows)
    table.to_csv(job.results / "mmlu.csv", index=False)
    return {
        "mmlu_unsteered": _reported(table.iloc[0], "mean", "low", "high", "item"),
        "mmlu_steered": _reported(table.iloc[1], "mean", "low", "high", "item"),
        "mmlu_steered_minus_unsteered": by_alpha[1]["minus_unsteered"],
        "mmlu_items": len(items),
        "mmlu_chance": MMLU_CHANCE,
        "mmlu_by_alpha": by_alpha,
        **_mmlu_claim_keys(by_alpha),
    }


def _mmlu_claim_keys(by_alpha: list[dict[str, Any]]) -> dict[str, Any]:
    """``mmlu_largest_swept_minus_unsteered`` and ``mmlu_kl_budget_minus_unsteered`` ({label:
    paired difference}) for the headline's side-effect family: each α once (one already
    claimed at the operating α, or at another row, is not claimed again)."""
    seen = {by_alpha[1]["alpha"]}
    out: dict[str, dict[str, Any]] = {}
    for r in by_alpha[2:]:
        if r["alpha"] in seen:
            continue
        seen.add(r["alpha"])
        if r["kl_budget"] is None:
            out.setdefault("mmlu_largest_swept_minus_unsteered", {})[f"α={r['alpha']:g}"] = r[
                "minus_unsteered"
            ]
        else:
            out.setdefault("mmlu_kl_budget_minus_unsteered", {})[
                f"{r['kl_budget']:g} nats, α={r['alpha']:g}"
            ] = r["minus_unsteered"]
    return out


def _mmlu_difference(correct: list[np.ndarray], seed: int) -> dict[str, Any]:
    """Steered minus unsteered accuracy, paired by item (bootstrap over items)."""
    diff = correct[1] - correct[0]
    est = cluster_estimate(diff, [str(i) for i in range(diff.size)], seed=seed)
    return est.reported("item")


def _token_effects_step(job: _Job) -> dict[str, Any]:
    if job.ds.ground_truth is None or "responses" not in job.ds.ground_truth:
        logger.info("token_effects: no planted truth (not a simulated set): skipped")
        return {}
    te = replace(job.cfg.token_effects, run=job.cfg.run)  # the run's batch size and seed
    return token_effect_study(job.model, job.ds, te, out=job.results.parent)


def _steerx_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    xcfg = SteerXStudyConfig(
        backbones=cfg.steerx_backbones,
        users_per_group=cfg.steerx_users_per_group,
        held_out=cfg.held_out,
        max_new_tokens=min(cfg.max_new_tokens, 32),
        steer_ppa=cfg.steer_ppa,
        run=cfg.run,
    )
    # rescaled to the study's population vector's norms, as the study's own vectors are
    norms = job.need("vectors")["population"].norms()
    run_steerx_compare(
        job.model, job.ds, xcfg, out=job.results.parent, data_label=cfg.data, norms=norms
    )
    return {}  # its keys are in summary.json already


_STEP_FNS: dict[str, Callable[[_Job], dict[str, Any]]] = {
    "vectors": _vectors_step,
    "dose": _dose_step,
    "side_effects": _side_effects_step,
    "calibrated": _calibrated_step,
    "gating": _gating_step,
    "conditional": _conditional_step,
    "mmlu": _mmlu_step,
    "token_effects": _token_effects_step,
    "steerx": _steerx_step,
}


# What each step reads (config fields and earlier steps): its fingerprint, so that a rerun
# skips it while these are unchanged (steerlens.experiments.resume). Every step also reads
# resume.GLOBAL_READS (model, data, seed, batch size).
STEP_INPUTS: dict[str, StepInputs] = {
    "vectors": StepInputs(
        (
            "methods",
            "held_out",
            "max_users",
            "steer_ppa",
            "steer_alpha",
            "max_steer_pairs",
            "options",
        )
    ),
    "dose": StepInputs(
        ("n_prompts", "methods", "alphas", "max_new_tokens", "held_out", "max_users"),
        ("vectors",),
    ),
    "side_effects": StepInputs(
        (
            "methods",
            "alphas",
            "mmlu_items",
            "neutral_texts",
            "side_effect_texts",
            "side_effect_users",
            "kl_texts",
        ),
        ("vectors", "dose"),
    ),
    "calibrated": StepInputs(
        ("methods", "kl_alphas", "kl_texts", "mmlu_items", "neutral_texts", "max_new_tokens"),
        ("vectors", "dose", "side_effects"),
    ),
    "gating": StepInputs(("gating_ks", "max_new_tokens"), ("vectors", "dose")),
    "conditional": StepInputs(
        (
            "methods",
            "alphas",
            "condition_method",
            "mmlu_items",
            "neutral_texts",
            "max_new_tokens",
        ),
        ("vectors", "dose"),
    ),
    "mmlu": StepInputs(
        ("alphas", "kl_alphas", "kl_texts", "mmlu_items"), ("vectors", "dose", "side_effects")
    ),
    "token_effects": StepInputs(("token_effects",)),
    "steerx": StepInputs(
        (
            "steerx_backbones",
            "steerx_users_per_group",
            "held_out",
            "max_new_tokens",
            "steer_ppa",
        ),
        ("vectors",),
    ),
}
# summary keys every step rewrites (never one step's own)
_SHARED_KEYS = frozenset({"headline", "seconds"})


# every file a step writes under results/ (the sweeps' parts excepted: content-addressed)
_RESULT_FILES = (
    "summary.json",
    "steps.json",
    "ppa.csv",
    "users_bt.csv",
    "prompts.jsonl",
    "dose_response.csv",
    "selectivity.csv",
    "utility_by_group.csv",
    "side_effects_rows.csv",
    "side_effects.csv",
    "calibrated.csv",
    "gating.csv",
    "conditional.csv",
    "conditional_by_category.csv",
    "conditional_kl_search.csv",
    "conditional_neutral_kl.csv",
    "mmlu.csv",
    "steerx_effects.json",
    "steerx_tokens.csv",
    "steerx_pr_curve.csv",
    "steerx_compare.csv",
    "steerx_compare.json",
    "steerx_descriptions.csv",
    "steerx_cards.json",
    "splits.json",
    "dose_response_select.csv",
    "kl_heldout_rows.csv",
)


def _machine() -> str:
    """The machine the timings were taken on, in words."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}"


def code_provenance() -> dict[str, Any]:
    """The code a run used: the steerlens version and, where the package sits in a git work
    tree, its commit (``dirty`` where tracked files differ from it)."""
    import subprocess

    out: dict[str, Any] = {"steerlens": __version__, "commit": None, "dirty": None}
    root = Path(__file__).resolve().parents[2]
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        if head.returncode == 0:
            status = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True
            )
            out["commit"] = head.stdout.decode().strip()
            out["dirty"] = bool(status.stdout.strip())
    except OSError:  # no git on this machine: the version alone
        pass
    return out


def study_key(cfg: DemoConfig) -> str:
    """What the results depend on (the config but its output folder, step list, device and
    batching of the sweep): a run with another key in the same folder starts afresh."""
    skip = ("out", "steps", "steerx", "cells_per_batch", "force")  # none changes a number
    fields = {k: v for k, v in asdict(cfg).items() if k not in skip}
    fields["run"] = {k: v for k, v in fields["run"].items() if k != "device"}
    # written as before the sections were nested (a folder made then keeps its key): the
    # method options only where they differ from the defaults, the token-effect study's seed
    # and batch size at its top level
    if cfg.options == MethodOptions():
        del fields["options"]
    if cfg.condition_method == "mean-diff":  # added later: the default keeps earlier keys
        del fields["condition_method"]
    if cfg.side_effect_texts is None:  # likewise
        del fields["side_effect_texts"]
    te = fields["token_effects"]
    te.update({k: v for k, v in te.pop("run").items() if k != "device"})
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
    the same inputs (``STEP_INPUTS``, ``steerlens.experiments.resume``) is skipped unless it
    is in ``cfg.force``; a step whose inputs changed is rerun, and one that is not run now is
    marked stale (its keys leave the summary). Returns ``results/summary.json``."""
    t0 = time.perf_counter()
    results = Path(cfg.out) / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary_path, steps_path = results / "summary.json", results / "steps.json"
    key = study_key(cfg)
    old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    status: dict[str, Any] = json.loads(steps_path.read_text()) if steps_path.exists() else {}
    if old.get("study_key") != key and any("fingerprint" not in e for e in status.values()):
        # a folder of another study written before steps had fingerprints: start afresh
        for name in _RESULT_FILES:
            (results / name).unlink(missing_ok=True)
        shutil.rmtree(results / "vectors", ignore_errors=True)
        old, status = {}, {}
        # (sweep parts stay: their names hash their cells, the model and the vectors)
    fps = fingerprints(asdict(cfg), STEP_INPUTS, STEPS, __version__)
    todo = [s for s in STEPS if s in cfg.steps]
    run = [s for s in todo if s in cfg.force or not finished(status.get(s), fps[s], results)]
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
            "machine": _machine(),
            "code": code_provenance(),
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


def _forget(
    summary_path: Path, status: dict[str, Any], names: list[str], seconds: dict[str, float]
) -> None:
    """Drop the summary keys and times the earlier runs of ``names`` wrote (they are rerun
    now, or stale)."""
    keys = {k for n in names for k in status.get(n, {}).get("keys", [])}
    for n in names:
        seconds.pop(n, None)
    if not summary_path.exists() or not keys:
        return
    current = json.loads(summary_path.read_text())
    kept = {k: v for k, v in current.items() if k not in keys}
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
        keys = _STEP_FNS[name](job)
    except Exception as e:
        status[name] = {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(steps_path, status)
        raise
    current = update_json(summary_path, keys)
    current = update_json(summary_path, {"headline": build_headline(current)})
    wrote = {k for k, v in current.items() if k not in before or before[k] != v} | set(keys)
    seconds = round(time.perf_counter() - start, 1)
    status[name] = {
        "status": "done",
        "seconds": seconds,
        "fingerprint": fingerprint,
        "keys": sorted(wrote - _SHARED_KEYS),
        "files": written_since(job.results, before_files),
    }
    write_json(steps_path, status)
    return seconds
