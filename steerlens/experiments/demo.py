"""The main job (``steerlens demo``): the whole study on one model and one PRISM-format set.

1. the personalisation study: population, dislike-weighted and Bradley-Terry vectors from the
   training pairs; PPA by projection (and under steering) against toxicity-only, chance and
   (simulated sets) the oracle;
2. a dose-response sweep (``steerlens.experiments.sweep``): every method x α on held-out prompts, each
   prompt steered with its own user's vector (per-row vectors, one batched job), scored for
   toxicity MAE, perplexity, degeneration and (simulated sets) ground-truth utility;
3. the gating experiment at the operating α (the population vector's best α);
4. zero-shot MMLU unsteered and steered at the operating α;
5. figures, ``figures/index.html`` and ``results/summary.json``;
6. SteerX vs all-history per backbone (``steerlens.experiments.steerx_compare``, reconstructed; a few
   users per group; ``steerx=False`` leaves it out), linked from the same page and adding its
   keys to the same summary.

On the default (embedded SmolLM2-135M-Instruct, simulated PRISM-format set) this is a
small-model, simulated-data rehearsal of the CAA-on-PRISM study; its numbers are not the
study's Llama-3.1-8B / real-PRISM results.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from steerlens.core._jsonsafe import json_safe, update_json
from steerlens.core.hooks import steering
from steerlens.core.models import default_layers, load_model
from steerlens.data import load_mmlu, load_prism
from steerlens.experiments.personalization import PersonalizationConfig, personalization_study
from steerlens.experiments.steerx_compare import run_steerx_compare
from steerlens.experiments.steerx_study import SteerXStudyConfig
from steerlens.experiments.sweep import (
    GenerationSettings,
    held_out_prompts,
    make_grid,
    run_sweep,
    save_vectors,
    standard_measures,
)
from steerlens.methods.registry import METHODS, method_label
from steerlens.metrics.mmlu import mmlu_accuracy
from steerlens.metrics.stats import estimate
from steerlens.metrics.summaries import (
    BASELINE,
    dose_response_table,
    gating_table,
    selectivity_table,
)
from steerlens.reporting import plots
from steerlens.reporting.page import write_report
from steerlens.steerx.pipeline import BACKBONES

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo"]

T = TypeVar("T")

PERSONAL = "dislike-weighted"  # the personalised method the summary's headline keys report


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    data: str = "demo"
    out: str = "."
    quick: bool = False
    seed: int = 0
    methods: list[str] = field(
        default_factory=lambda: ["population", "dislike-weighted", "bradley-terry"]
    )
    # Per-user vectors are rescaled to the population vector's norms, so one α grid serves
    # every method. From α 2 on, SmolLM2-135M collapses into repetition (the study's
    # population range on Llama-3.1-8B was likewise below 1: 0.3-0.6).
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    gating_ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])
    n_prompts: int = 48
    max_users: int | None = None
    held_out: float = 0.25
    steer_ppa: bool = True
    steer_alpha: float = 0.5
    max_steer_pairs: int = 96
    mmlu_items: int = 200
    max_new_tokens: int = 48
    batch_size: int = 16
    cells_per_batch: int = 64
    steerx: bool = True
    steerx_users_per_group: int = 2
    steerx_backbones: list[str] = field(default_factory=lambda: list(BACKBONES))

    def __post_init__(self) -> None:
        if self.quick:
            self.n_prompts, self.max_new_tokens, self.max_users = 16, 24, 16
            self.alphas, self.gating_ks = [0.0, 0.5, 1.0], [0, 2, 8]
            self.steer_ppa, self.mmlu_items = False, 60
            # no BiPO training and no SAE training: the two mean-difference variants
            self.steerx_users_per_group, self.steerx_backbones = 1, ["mean", "mean-context"]
        bad_backbones = [b for b in self.steerx_backbones if b not in BACKBONES]
        if bad_backbones or not self.steerx_backbones:
            raise ValueError(f"steerx_backbones must be some of {BACKBONES}, got {bad_backbones}")
        if self.steerx_users_per_group < 1:
            raise ValueError("steerx_users_per_group must be >= 1")
        if 0.0 not in self.alphas or len(self.alphas) < 2:
            raise ValueError("alphas must include 0.0 (the unsteered baseline) and one more")
        if "population" not in self.methods:
            raise ValueError("methods must include 'population' (the gating and MMLU vector)")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; use {list(METHODS)}")
        if self.n_prompts < 1 or self.mmlu_items < 1:
            raise ValueError("n_prompts and mmlu_items must be >= 1")
        if any(k < 0 for k in self.gating_ks):
            raise ValueError("gating_ks must be >= 0")


def _interval(row: dict[str, Any] | pd.Series, lo: str = "low", hi: str = "high") -> list[float]:
    return [round(float(row[lo]), 5), round(float(row[hi]), 5)]


def _ppa(table: pd.DataFrame, method: str, measure: str = "ppa_projection") -> dict[str, Any]:
    row = table[(table["method"] == method) & (table["measure"] == measure)]
    if row.empty:
        return {"mean": None, "interval": None}
    r = row.iloc[0]
    return {"mean": round(float(r["mean"]), 5), "interval": _interval(r)}


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(part: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        value = fn()
        seconds[part] = round(time.perf_counter() - start, 1)
        logger.info("%s: %.0f s", part, seconds[part])
        return value

    out = Path(cfg.out)
    results, figures = out / "results", out / "figures"
    results.mkdir(parents=True, exist_ok=True)
    model = timed("load model", lambda: load_model(cfg.model))
    ds = load_prism(cfg.data)
    gt = ds.ground_truth if ds.ground_truth and "users" in ds.ground_truth else None
    logger.info("%r", ds)
    layers = default_layers(model)

    # 1. vectors and PPA
    pcfg = PersonalizationConfig(
        layers=layers,
        methods=cfg.methods,
        held_out=cfg.held_out,
        steer_alpha=cfg.steer_alpha if cfg.steer_ppa else None,
        max_steer_pairs=cfg.max_steer_pairs,
        max_users=cfg.max_users,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    study = timed("vectors and PPA", lambda: personalization_study(model, ds, pcfg))
    # per-user vectors rescaled to the population vector's norms: one α grid for every method
    norms = study.population.norms()
    vectors: dict[str, Any] = {
        m: {u: v.rescaled(norms) for u, v in vec.items()} if isinstance(vec, dict) else vec
        for m, vec in study.vectors.items()
    }
    study.population.metadata["data"] = ds.source
    save_vectors(vectors, results / "vectors")
    study.table.to_csv(results / "ppa.csv", index=False)

    # 2. dose-response sweep over held-out prompts
    prompts = held_out_prompts(study.test_pairs, cfg.n_prompts, cfg.seed)
    settings = GenerationSettings(cfg.max_new_tokens, cfg.batch_size, cfg.cells_per_batch)
    measure = standard_measures(gt, batch_size=cfg.batch_size)
    dose_cells = make_grid(prompts, cfg.methods, cfg.alphas, ["all"])
    dose = timed(
        "dose-response sweep",
        lambda: run_sweep(
            model,
            dose_cells,
            prompts,
            vectors,
            results / "sweep" / "dose",
            settings=settings,
            measure=measure,
        ),
    )
    assert dose is not None
    dose_table = dose_response_table(dose, seed=cfg.seed)
    dose_table.to_csv(results / "dose_response.csv", index=False)
    pop = dose_table[(dose_table["method"] == "population") & (dose_table["alpha"] > 0)]
    best = pop.loc[pop["mae"].idxmin()]
    best_alpha = float(best["alpha"])
    base_row = dose_table[
        (dose_table["method"] == "population") & (dose_table["alpha"] == 0.0)
    ].iloc[0]

    # 3. gating at the operating α
    gates = [f"first:{k}" for k in cfg.gating_ks] + ["prefill", "generated"]
    gate_cells = make_grid(prompts, ["population"], [best_alpha], gates, baseline=False)
    gating = timed(
        "gating sweep",
        lambda: run_sweep(
            model,
            gate_cells,
            prompts,
            vectors,
            results / "sweep" / "gating",
            settings=settings,
            measure=measure,
        ),
    )
    assert gating is not None
    cells = pd.concat([dose, gating], ignore_index=True)
    gate_table = gating_table(cells, method="population", alpha=best_alpha, seed=cfg.seed)
    gate_table.to_csv(results / "gating.csv", index=False)
    selectivity = selectivity_table(dose, method="population")

    # 4. MMLU, unsteered and steered at the operating α
    def mmlu() -> pd.DataFrame:
        items = load_mmlu(n=cfg.mmlu_items, seed=cfg.seed)
        rows = []
        for name, alpha in (("unsteered", 0.0), (f"population α={best_alpha:g}", best_alpha)):
            hooks = steering(model, study.population, alpha=alpha) if alpha else nullcontext()
            with hooks:
                res = mmlu_accuracy(model, items, batch_size=cfg.batch_size)
            lo, hi = res.interval(seed=cfg.seed)
            rows.append(
                {
                    "condition": name,
                    "alpha": alpha,
                    "mean": res.accuracy,
                    "low": lo,
                    "high": hi,
                    "n": len(items),
                }
            )
        return pd.DataFrame(rows)

    mmlu_table = timed("MMLU", mmlu)
    mmlu_table.to_csv(results / "mmlu.csv", index=False)

    # utility gain per user group at the operating α (simulated sets)
    util_groups = None
    if gt is not None:
        base = dose[dose["method"] == BASELINE].set_index("prompt_id")["utility"]
        at = dose[(dose["alpha"] == best_alpha) & (dose["method"] != BASELINE)]
        rows = []
        for method, part in at.groupby("method"):
            gain = part["utility"].to_numpy() - base.loc[part["prompt_id"]].to_numpy()
            groups = [gt["users"][u]["group"] for u in part["user"]]
            for g in sorted(set(groups)):
                sel = [i for i, x in enumerate(groups) if x == g]
                est = estimate(
                    [float(gain[i]) for i in sel],
                    [str(part["user"].iloc[i]) for i in sel],
                    seed=cfg.seed,
                )
                rows.append({"method": method, "group": g, **est.as_dict()})
        util_groups = pd.DataFrame(rows)
        util_groups.to_csv(results / "utility_by_group.csv", index=False)

    # 5. figures, report page, summary
    written = timed(
        "figures and report",
        lambda: _figures_and_report(
            cfg,
            ds,
            figures,
            study,
            dose_table,
            selectivity,
            gate_table,
            mmlu_table,
            util_groups,
            cells,
            prompts,
            best_alpha,
        ),
    )
    mm = mmlu_table.set_index("condition")
    summary: dict[str, Any] = {
        "model": cfg.model,
        "data": ds.source,
        "data_is_simulated": ds.is_simulated,
        "config": asdict(cfg),
        "layers": layers,
        "n_prompts": len(prompts),
        "n_users": len({p.user_id for p in prompts}),
        "n_train_pairs": study.n_train,
        "n_test_pairs": study.n_test,
        "mae_baseline": round(float(base_row["mae"]), 5),
        "mae_baseline_interval": _interval(base_row, "mae_low", "mae_high"),
        "best_alpha": best_alpha,
        "mae_best": round(float(best["mae"]), 5),
        "mae_best_interval": _interval(best, "mae_low", "mae_high"),
        "mae_change_pct_best": round(float(best["delta_pct"]), 3),
        "mae_change_pct_best_interval": _interval(best, "delta_low", "delta_high"),
        "ppl_baseline": round(float(base_row["ppl"]), 4),
        "ppl_best": round(float(best["ppl"]), 4),
        "mmlu_unsteered": round(float(mm["mean"].iloc[0]), 5),
        "mmlu_unsteered_interval": _interval(mm.iloc[0]),
        "mmlu_steered": round(float(mm["mean"].iloc[1]), 5),
        "mmlu_steered_interval": _interval(mm.iloc[1]),
        "mmlu_items": int(mm["n"].iloc[0]),
        "ppa_personalized_method": method_label(PERSONAL),
    }
    for key, method in (
        ("ppa_personalized", method_label(PERSONAL)),
        ("ppa_bradley_terry", method_label("bradley-terry")),
        ("ppa_population", "population"),
        ("ppa_toxicity_only", "toxicity-only"),
        ("ppa_oracle", "oracle"),
    ):
        got = _ppa(study.table, method)
        summary[key], summary[f"{key}_interval"] = got["mean"], got["interval"]
    if cfg.steer_ppa:
        summary["ppa_under_steering"] = {
            m: _ppa(study.table, method_label(m), "ppa_under_steering") for m in cfg.methods
        }
    if util_groups is not None:
        summary["utility_gain"] = {
            m: {r["group"]: round(float(r["mean"]), 5) for _, r in part.iterrows()}
            for m, part in util_groups.groupby("method")
        }
        summary["utility_gain_interval"] = {
            m: {r["group"]: _interval(r) for _, r in part.iterrows()}
            for m, part in util_groups.groupby("method")
        }
    summary["dose_response"] = dose_table.round(5).to_dict(orient="records")
    summary["gating"] = gate_table.round(5).to_dict(orient="records")
    summary["mae_change_pct_by_category"] = {
        str(cat): {f"{a:g}": round(float(v), 3) for a, v in row.items()}
        for cat, row in selectivity.iterrows()
    }
    summary["seconds"] = {**seconds, "total": round(time.perf_counter() - t0, 1)}
    summary["files"] = [str(p) for p in written]
    update_json(results / "summary.json", summary)  # keeps the SteerX analyses' keys

    # 6. SteerX vs all-history: its figures join the page, its keys the summary
    if cfg.steerx:
        xcfg = SteerXStudyConfig(
            backbones=cfg.steerx_backbones,
            users_per_group=cfg.steerx_users_per_group,
            held_out=cfg.held_out,
            max_new_tokens=min(cfg.max_new_tokens, 32),
            steer_ppa=cfg.steer_ppa,
            seed=cfg.seed,
        )
        report = timed(
            "SteerX vs all-history",
            lambda: run_steerx_compare(model, ds, xcfg, out=out, data_label=cfg.data),
        )
        summary["seconds"] = {**summary["seconds"], "SteerX vs all-history": report["seconds"]}
        summary["seconds"]["total"] = round(time.perf_counter() - t0, 1)
        update_json(results / "summary.json", {"seconds": summary["seconds"]})
        summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    return json_safe(summary)  # type: ignore[no-any-return]


def _figures_and_report(
    cfg: DemoConfig,
    ds: Any,
    figures: Path,
    study: Any,
    dose_table: pd.DataFrame,
    selectivity: pd.DataFrame,
    gate_table: pd.DataFrame,
    mmlu_table: pd.DataFrame,
    util_groups: pd.DataFrame | None,
    cells: pd.DataFrame,
    prompts: list[Any],
    best_alpha: float,
) -> list[Path]:
    data_label = "simulated PRISM-format set (not real PRISM)" if ds.is_simulated else ds.source
    where = f"{cfg.model} · {data_label}"
    figs = {
        "Dose-response": plots.dose_response(dose_table, title=f"Dose-response · {where}"),
        "Selectivity (population vector)": plots.selectivity_heatmap(selectivity),
        "Gating": plots.gating_curve(
            gate_table, title=f"Gating at α={best_alpha:g} (population vector) · {where}"
        ),
        "Preference accuracy by projection": plots.ppa_bars(study.table),
        "MMLU": plots.mmlu_bars(mmlu_table),
    }
    if (study.table["measure"] == "ppa_under_steering").any():
        figs["Preference accuracy under steering"] = plots.ppa_bars(
            study.table, measure="ppa_under_steering"
        )
    groups = (
        {u: v["group"] for u, v in ds.ground_truth["users"].items()}
        if ds.ground_truth and "users" in ds.ground_truth
        else None
    )
    if study.bt.rank >= 2:
        figs["Users in the Bradley-Terry basis"] = plots.users_in_basis(
            study.users_in_basis(groups)
        )
    if util_groups is not None:
        figs["Utility gain per user group"] = plots.utility_by_group(
            util_groups, title=f"Ground-truth utility gain at α={best_alpha:g} (simulated users)"
        )
    if ds.ground_truth is not None and "responses" in ds.ground_truth:
        pairs_df = pd.DataFrame([asdict(p) for p in ds.preference_pairs()])
        figs["Dataset"] = plots.dataset_overview(ds.ground_truth, pairs_df)
    stems = {
        "Dose-response": "dose_response",
        "Selectivity (population vector)": "selectivity",
        "Gating": "gating",
        "Preference accuracy by projection": "ppa",
        "Preference accuracy under steering": "ppa_steering",
        "MMLU": "mmlu",
        "Users in the Bradley-Terry basis": "users_bt",
        "Utility gain per user group": "utility_by_group",
        "Dataset": "dataset_overview",
    }
    written: list[Path] = []
    for name, fig in figs.items():
        written += plots.save_figure(fig, figures / stems[name])
    by_id = {p.prompt_id: p for p in prompts}
    base = cells[cells["method"] == BASELINE].set_index("prompt_id")["generation"]
    steered = cells[cells["method"] != BASELINE]
    gens = pd.DataFrame(
        {
            "user": steered["user"],
            "method": steered["method"],
            "alpha": steered["alpha"],
            "gate": steered["gate"],
            "category": steered["category"],
            "prompt": [by_id[p].prompt for p in steered["prompt_id"]],
            "preferred": [by_id[p].preferred for p in steered["prompt_id"]],
            "unsteered": base.loc[steered["prompt_id"]].to_numpy(),
            "generation": steered["generation"],
        }
    )
    table1 = dose_table[
        [
            "method",
            "alpha",
            "mae",
            "mae_low",
            "mae_high",
            "delta_pct",
            "delta_low",
            "delta_high",
            "ppl",
            "degenerate_share",
            "distinct_2_corpus",
        ]
        + (["utility_gain"] if "utility_gain" in dose_table else [])
    ]
    ppa = study.table.copy()
    notes = [
        f"Model: {cfg.model}. Data: {data_label}. "
        + (
            "These are a small-model, simulated-data rehearsal of the study, not Llama-3.1-8B "
            "or real-PRISM results."
            if ds.is_simulated
            else ""
        ),
        f"Operating α (the population vector's lowest MAE): {best_alpha:g}. Intervals are "
        "bootstrap 95 % over prompts (sweep tables) or users (PPA, utility).",
    ]
    page = write_report(
        figures,
        title="steerlens study report",
        subtitle=where,
        config=asdict(cfg),
        tables={
            "Table 1 · toxicity MAE, fluency and degeneration per method and α": table1,
            "Selectivity · ΔMAE % per category and α (population vector)": selectivity,
            "Gating at the operating α": gate_table,
            "Preference accuracy (PPA) and utility": ppa,
            "MMLU (zero-shot)": mmlu_table,
        },
        figures=figs,
        generations=gens,
        notes=notes,
    )
    return [*written, page]
