"""What the steps of one study share: the job (config, model, data set, results folder and
what earlier steps made, read back from disk when they ran in an earlier job) and small
helpers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from steerlens.core.models import HookedModel
from steerlens.data import load_mmlu, neutral_texts
from steerlens.data.prism import PrismDataset
from steerlens.data.schema import PreferencePair
from steerlens.experiments.personalization import PersonalizationConfig
from steerlens.experiments.splits import Split, agreed_side
from steerlens.experiments.steps.base import provider
from steerlens.experiments.study_config import DemoConfig
from steerlens.experiments.sweep import GenerationSettings, SweepPrompt
from steerlens.metrics.stats import reported
from steerlens.metrics.token_truth import text_id

logger = logging.getLogger(__name__)


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
    operating_alpha: float | None = None

    @property
    def gt(self) -> dict[str, Any] | None:
        gt = self.ds.ground_truth
        return gt if gt and "users" in gt else None

    @property
    def settings(self) -> GenerationSettings:
        c = self.cfg
        return GenerationSettings(c.max_new_tokens, c.run.generation_batch_size, c.cells_per_batch)

    def need(self, what: str) -> Any:
        """An input of a step: from this run's memory, else from what an earlier run of the
        step before wrote under ``results/`` (so a step can be rerun on its own)."""
        value = getattr(self, what)
        if value is None or (isinstance(value, list | dict) and not value):
            value = self._from_disk(what)
            setattr(self, what, value)
        return value

    def _from_disk(self, what: str) -> Any:
        """``what`` read back by the registered step that makes it (``Step.provides``)."""
        step = provider(what)
        if step is None:
            raise RuntimeError(f"no registered step makes {what!r}")
        try:
            value = step.provides[what](self)
        except FileNotFoundError:
            value = None
        if value is None:
            raise RuntimeError(
                f"this step needs {what!r}: run the step {step.name!r} that makes it first (in "
                f"this job, or earlier into {self.results})"
            )
        return value


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
