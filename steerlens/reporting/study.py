"""The study's report, drawn from what the job's steps wrote under ``OUT/results/``:
``OUT/figures/index.html`` (headline, tables, figures, generation browser, links), every
figure as ``OUT/figures/<name>.html`` (and ``.png`` when asked, where Chromium is
available), and the SteerX user cards. It reads files only, so a partial run is reported with what it has;
``steerlens demo`` runs it at the end and ``steerlens report`` on its own."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from steerlens.data.prism import load_prism
from steerlens.experiments.steps import REGISTRY
from steerlens.experiments.summary_file import read_summary
from steerlens.metrics.summaries import BASELINE
from steerlens.reporting import plots
from steerlens.reporting.claim_text import headline
from steerlens.reporting.markdown import conditional_verdict
from steerlens.reporting.page import write_report, write_user_card
from steerlens.reporting.tables import (
    calibrated_view,
    conditional_view,
    dose_view,
    gating_view,
    mmlu_view,
    ppa_view,
    selectivity_view,
    side_effects_view,
    steerx_view,
)

logger = logging.getLogger(__name__)

__all__ = ["report_figures", "write_study_report"]


# which step wrote each file: with results/steps.json, only the files of steps it records
# as done are drawn (a file left by an earlier, different run is not)
def _step_of(name: str) -> str | None:
    """The registered step that writes the file ``name`` under ``results/`` (None: none)."""
    for step in REGISTRY.values():
        if name in step.files:
            return step.name
    return None


class _Results:
    """The run's files under ``results/``; with ``steps.json``, only those of done steps."""

    def __init__(self, folder: Path, done: set[str] | None) -> None:
        self.folder, self.done = folder, done

    def usable(self, path: Path) -> bool:
        step = _step_of(path.name)
        return path.exists() and (self.done is None or step is None or step in self.done)

    def step_done(self, step: str) -> bool:
        return self.done is None or step in self.done

    def csv(self, name: str, **kw: Any) -> pd.DataFrame | None:
        path = self.folder / name
        return pd.read_csv(path, **kw) if self.usable(path) else None

    def json(self, name: str) -> Any:
        path = self.folder / name
        return json.loads(path.read_text(encoding="utf-8")) if self.usable(path) else None


def _generations(res: _Results) -> pd.DataFrame | None:
    """Every steered generation beside its prompt, preferred and unsteered response."""
    prompts_file = res.folder / "prompts.jsonl"
    parts = [
        pd.read_parquet(p)
        for name in ("dose", "gating", "calibrated")
        if (p := res.folder / "sweep" / name / "cells.parquet").exists() and res.step_done(name)
    ]
    if not parts or not res.usable(prompts_file):
        return None
    prompts = {
        r["prompt_id"]: r
        for r in (json.loads(line) for line in prompts_file.read_text().splitlines() if line)
    }
    cells = pd.concat(parts, ignore_index=True)
    base = cells[cells["method"] == BASELINE].drop_duplicates("prompt_id")
    base = base.set_index("prompt_id")["generation"]
    steered = cells[(cells["method"] != BASELINE) & cells["prompt_id"].isin(prompts)]
    budget = steered["kl_budget"] if "kl_budget" in steered else pd.Series(None, steered.index)
    return pd.DataFrame(
        {
            "user": steered["user"],
            "method": steered["method"],
            "alpha": steered["alpha"].round(3),
            "gate": [
                g if pd.isna(b) else f"{g} · KL {b:g}"
                for g, b in zip(steered["gate"], budget, strict=True)
            ],
            "category": steered["category"],
            "prompt": [prompts[p]["prompt"] for p in steered["prompt_id"]],
            "preferred": [prompts[p].get("preferred") for p in steered["prompt_id"]],
            "unsteered": base.reindex(steered["prompt_id"]).to_numpy(),
            "generation": steered["generation"],
        }
    )


def _token_figures(report: dict[str, Any], curve: pd.DataFrame | None) -> dict[str, go.Figure]:
    figs: dict[str, go.Figure] = {}
    model = report.get("model", "")
    if curve is not None:
        smoke = " (smoke run)" if report.get("config", {}).get("smoke") else ""
        figs["steerx_pr"] = plots.pr_curves(
            curve, title=f"Token selection vs planted truth{smoke} · {model}"
        )
    d = report.get("detail")
    if d:
        frame = pd.DataFrame(d["frame"])
        figs["steerx_tokens"] = plots.token_effects(
            frame, title=f"{d['user']}: effect of their history on each token"
        )
        figs["steerx_items"] = plots.effect_heatmap(
            d["item_effect"],
            x=d["tokens"],
            y=d["items"],
            x_title="target token",
            y_title="history item (its prompt)",
            title=f"{d['user']}: P(y_t | history) − P(y_t | history without item)",
        )
        figs["steerx_history_tokens"] = plots.effect_heatmap(
            d["history_token_log_ratio"],
            x=d["tokens"],
            y=d["history_tokens"],
            x_title="target token",
            y_title="history token (removed)",
            colorbar="Δ log p",
            title=f"{d['user']}: log p(y_t | history) − log p(y_t | without the token)",
        )
    heat = report.get("patching")
    if heat:
        figs["steerx_patching"] = plots.effect_heatmap(
            heat["share_restored"],
            x=heat["tokens"],
            y=[str(x) for x in heat["layers"]],
            x_title="aligned target position",
            y_title="layer (resid_post)",
            colorbar="share restored",
            title="Activation patching: share of the history's log-prob effect restored",
        )
    return figs


def _steerx_figures(table: pd.DataFrame, where: str) -> dict[str, go.Figure]:
    figs = {}
    for measure in table["measure"].unique():
        m = str(measure)
        if m.endswith("_paired") or m == "description_hit_rate":
            continue
        stem = "steerx_vs_allhistory_" + m.split("@")[0]
        figs[stem] = plots.steerx_bars(
            table, measure=m, title=f"SteerX vs all-history · {m} · {where}"
        )
    return figs


_Figs = dict[str, tuple[str, go.Figure]]  # stem -> (heading, figure)
_Tables = dict[str, pd.DataFrame]


def _sweep_sections(res: _Results, where: str, best: Any, figs: _Figs, tables: _Tables) -> None:
    """Add the sweep's figures and tables: dose-response, side effects, calibration, selectivity,
    gating."""
    dose, side = res.csv("dose_response.csv"), res.csv("side_effects.csv")
    if dose is not None:
        figs["dose_response"] = (
            "Dose-response",
            plots.dose_response(dose, side_effects=side, title=f"Dose-response · {where}"),
        )
        tables["Toxicity MAE, utility, fluency and degeneration per method and α"] = dose_view(dose)
    if side is not None:
        tables["Side effects on neutral text (MMLU question stems), per method and α"] = (
            side_effects_view(side)
        )
    cal = res.csv("calibrated.csv")
    if cal is not None:
        figs["calibrated"] = ("Equal side effect (KL-calibrated α)", plots.calibrated_curves(cal))
        tables["Each user's α calibrated to a KL budget"] = calibrated_view(cal)
    sel = res.csv("selectivity.csv", index_col=0)
    if sel is not None:
        sel.columns = [float(c) for c in sel.columns]
        figs["selectivity"] = ("Selectivity (population vector)", plots.selectivity_heatmap(sel))
        tables["ΔMAE % per prompt category and α (population vector)"] = selectivity_view(sel)
    gating = res.csv("gating.csv")
    if gating is not None and best is not None:
        figs["gating"] = (
            "Gating",
            plots.gating_curve(gating, title=f"Gating at α={best:g} (population vector)"),
        )
        tables[f"Gating at the operating α = {best:g}"] = gating_view(gating)
    by_cat, cond = res.csv("conditional_by_category.csv"), res.csv("conditional.csv")
    if by_cat is not None:
        figs["conditional"] = (
            "Conditional vs unconditional steering",
            plots.conditional_dose(
                by_cat, title=f"Conditional vs unconditional · population vector · {where}"
            ),
        )
    if cond is not None:
        tables["Conditional vs unconditional steering on the report prompts (paired by prompt)"] = (
            conditional_view(cond)
        )


def _preference_sections(res: _Results, best: Any, figs: _Figs, tables: _Tables) -> None:
    """Add the preference accuracy, users-in-basis, utility-by-group and MMLU figures and tables."""
    ppa = res.csv("ppa.csv")
    if ppa is not None:
        figs["ppa"] = ("Preference accuracy by projection", plots.ppa_bars(ppa))
        if (ppa["measure"] == "ppa_under_steering").any():
            figs["ppa_steering"] = (
                "Preference accuracy under steering",
                plots.ppa_bars(ppa, measure="ppa_under_steering"),
            )
        tables["Preference accuracy (PPA) and utility"] = ppa_view(ppa)
    bt = res.csv("users_bt.csv", index_col=0)
    if bt is not None:
        figs["users_bt"] = ("Users in the Bradley-Terry basis", plots.users_in_basis(bt))
    util = res.csv("utility_by_group.csv")
    if util is not None and best is not None:
        figs["utility_by_group"] = (
            "Keyword-density utility gain per user group",
            plots.utility_by_group(  # gains vs unsteered (the paired differences: tables)
                util[~util["method"].str.contains("−")],
                title=f"Keyword-density utility gain at α={best:g}, report prompts (simulated "
                "users; degenerate outputs count no gain)",
            ),
        )
    mmlu = res.csv("mmlu.csv")
    if mmlu is not None:
        figs["mmlu"] = ("MMLU", plots.mmlu_bars(mmlu))
        tables["Zero-shot MMLU"] = mmlu_view(mmlu)


def _dataset_section(s: dict[str, Any], figs: _Figs) -> None:
    """Add the simulated dataset's overview figure (left out when the set cannot be loaded)."""
    try:
        ds = load_prism(str(s.get("config", {}).get("data", "demo")))
        if ds.ground_truth is not None and "responses" in ds.ground_truth:
            pairs = pd.DataFrame([p.__dict__ for p in ds.preference_pairs()])
            figs["dataset_overview"] = (
                "Dataset",
                plots.dataset_overview(ds.ground_truth, pairs),
            )
    except (FileNotFoundError, ValueError) as e:  # the set moved: report without it
        logger.warning("dataset overview left out: %s", e)


def _steerx_sections(
    res: _Results, where: str, figs: _Figs, tables: _Tables
) -> dict[str, go.Figure]:
    """Add SteerX's page figures and table; returns the figures that get pages of their own."""
    extra: dict[str, go.Figure] = {}
    effects = res.json("steerx_effects.json")
    if effects is not None:
        extra.update(_token_figures(effects, res.csv("steerx_pr_curve.csv")))
        if "steerx_pr" in extra:
            figs["steerx_pr"] = ("SteerX token selection (reconstructed)", extra.pop("steerx_pr"))
    compare = res.csv("steerx_compare.csv")
    if compare is not None:
        for stem, fig in _steerx_figures(compare, where).items():
            if stem.endswith("ppa_projection"):
                figs[stem] = ("SteerX vs all-history (reconstructed), PPA by projection", fig)
            else:
                extra[stem] = fig
        tables["SteerX (reconstructed) vs all-history, per backbone"] = steerx_view(compare)
    return extra


def _save_pages(
    res: _Results, figures: Path, figs: _Figs, extra: dict[str, go.Figure], png: bool
) -> tuple[list[Path], dict[str, str]]:
    """Save every figure (``png``: also as PNG) and the SteerX user cards; returns the files
    written and the links."""
    batch = {figures / stem: fig for stem, (_, fig) in figs.items()}
    batch.update({figures / stem: fig for stem, fig in extra.items()})
    written = plots.save_figures(batch, png=png)  # the PNGs in one Chromium session
    links: dict[str, str] = {stem.replace("_", " "): f"{stem}.html" for stem in extra}
    for card in res.json("steerx_cards.json") or []:
        page = write_user_card(
            figures / f"steerx_user_{card['user']}.html",
            user=card["user"],
            description=card["description"],
            subtitle=card.get("subtitle", ""),
            targets=[
                (t["prompt"], t["tokens"], t["effect"], t["selected"]) for t in card["targets"]
            ],
        )
        written.append(page)
        links[f"SteerX user card: {card['user']} ({card['group']})"] = page.name
    return written, links


def _notes(s: dict[str, Any], steps: dict[str, Any], data_label: Any, simulated: bool) -> list[str]:
    """The page's notes: model and data, the intervals' rule, and the steps that did not finish."""
    missing = [k for k, v in steps.items() if v.get("status") != "done"]
    planned = (s.get("config") or {}).get("steps") or []
    missing += [k for k in planned if k not in steps]  # never started
    notes = [
        f"Model: {s.get('model')}. Data: {data_label}."
        + (
            " A small-model, simulated-data rehearsal of the study, not Llama-3.1-8B or "
            "real-PRISM results."
            if simulated
            else ""
        ),
        "Intervals: bootstrap 95 % over the units that vary — users, then prompts within them "
        "(sweep rows, utility); users (PPA); users then texts, or texts for one vector (side "
        "effects); items (MMLU) — with n units, withheld below 5. Tuned quantities are chosen "
        "on a selection split and reported on a disjoint one (results/splits.json). SteerX is "
        "a reconstruction (its body text was unavailable).",
    ]
    if missing:
        notes.append(f"Partial run: steps {missing} did not finish; their sections are missing.")
    return notes


class _Report:
    """What the report draws from a run's files: its summary, steps, figures and tables."""

    def __init__(self, out: str | Path) -> None:
        out = Path(out)
        results = out / "results"
        if not (results / "summary.json").exists():
            raise FileNotFoundError(f"{results / 'summary.json'} not found: run `steerlens demo`")
        self.figures_dir = out / "figures"
        self.s = s = read_summary(results / "summary.json")
        steps_file = results / "steps.json"
        self.steps = steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
        self.res = res = _Results(
            results, {k for k, v in steps.items() if v.get("status") == "done"} if steps else None
        )
        self.simulated = simulated = bool(s.get("data_is_simulated"))
        self.data_label = (
            "simulated PRISM-format set (not real PRISM)" if simulated else s.get("data")
        )
        self.where = where = f"{s.get('model')} · {self.data_label}"
        best = s.get("operating_alpha")
        self.figs: _Figs = {}
        self.tables: _Tables = {}
        _sweep_sections(res, where, best, self.figs, self.tables)
        _preference_sections(res, best, self.figs, self.tables)
        if simulated:
            _dataset_section(s, self.figs)
        # SteerX: token effects and the comparison, on the page and on pages of their own
        self.extra = _steerx_sections(res, where, self.figs, self.tables)


def report_figures(out: str | Path = ".") -> dict[str, tuple[str, go.Figure]]:
    """Every figure of the run's report, as ``{stem: (heading, figure)}`` (the explorer shows
    them live). Raises ``FileNotFoundError`` when ``out/results/summary.json`` is missing."""
    report = _Report(out)
    return {
        **report.figs,
        **{stem: (stem.replace("_", " "), fig) for stem, fig in report.extra.items()},
    }


def write_study_report(out: str | Path = ".", *, png: bool = True) -> list[Path]:
    """Write the report of the run under ``out`` from its files; returns the files written.
    Every figure is an HTML file (offline); ``png`` also exports each as a PNG, where a
    Chromium is available (about 0.3 s a figure).

    Raises ``FileNotFoundError`` when ``out/results/summary.json`` is missing.
    """
    r = _Report(out)
    written, links = _save_pages(r.res, r.figures_dir, r.figs, r.extra, png)
    page = write_report(
        r.figures_dir,
        title="steerlens study report",
        subtitle=r.where,
        config=r.s.get("config"),
        tables=r.tables,
        figures={heading: fig for heading, fig in r.figs.values()},
        generations=_generations(r.res),
        notes=[
            *_notes(r.s, r.steps, r.data_label, r.simulated),
            *([conditional_verdict(r.s)] if r.s.get("conditional") else []),
        ],
        links=links,
        headline=headline(r.s),
    )
    return [*written, page]
