"""SteerX's first step scored against the simulated set's planted truth (a job step).

For every simulated user, the causal effect of their history (their other turn-0
conversations) on each token of their chosen responses, against two counterfactuals (no
history: NextQuill; another user's history of the same length: a placebo), as probability
differences and log-ratios. Each estimator's selected tokens are scored against the planted
attribute spans (``steerlens.metrics.token_truth``): a precision-recall curve per estimator,
the estimator and threshold chosen on a selection side and scored on a disjoint report side
(users every other, prompts by a seeded hash, each user's targets from its own side's
prompts: the sides share neither users nor response texts; ``results/splits.json``), and
beside it, on the same report side and tuned alike, its baselines
(``summary["token_baselines"]``): NextQuill's score (no history, p-difference) with a tuned
threshold and at its published 0.05, the best placebo-controlled estimator (another user's
history), a position-only rule (a response's first k tokens) and the base rate. Precision and recall
carry a two-stage bootstrap interval (users, then their tokens) and their n users, against
both the planted and the completed truth. On a few targets, exact
activation patching is compared with attribution patching (gradient x activation difference,
and integrated gradients).

Writes ``OUT/results/steerx_effects.json`` (the report, with one response's detail matrices
for the figures), ``steerx_tokens.csv``, ``steerx_pr_curve.csv``, and the summary keys
``token_precision``, ``token_recall``, ``token_precision_baseline``, ``token_recall_baseline``,
``token_precision_minus_baseline``, ``token_recall_minus_baseline`` (each also ``_planted``;
"baseline" is NextQuill's score with its threshold tuned), ``token_baselines``,
the report side's counts and ``attribution_spearman`` to ``OUT/results/summary.json``; the
split goes to ``OUT/results/splits.json``. The figures are drawn from
these files by ``steerlens.reporting.study``.

SteerX's body text was not available: this is a reconstruction on the NextQuill estimator.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlens.core._jsonsafe import update_json, write_json
from steerlens.core.models import HookedModel, model_name
from steerlens.data.prism import PrismDataset
from steerlens.experiments.config import RunSection, as_section
from steerlens.experiments.splits import Split, record_selection, split_parity
from steerlens.metrics.stats import cluster_resamples, reported, t_interval
from steerlens.metrics.token_truth import (
    ESTIMATORS,
    Truth,
    estimator_scores,
    planted_labels,
    pr_curve,
    text_id,
    user_queries,
)
from steerlens.steerx import (
    activation_patching,
    attribution_patching,
    batch_history_effects,
    history_token_effects,
    item_effects,
    rank_agreement,
)

__all__ = ["TokenEffectsConfig", "token_effect_study"]

RECONSTRUCTION = "SteerX body text unavailable; NextQuill estimator"


@dataclass
class TokenEffectsConfig:
    n_history: int = 4
    targets_per_user: int = 3
    max_users: int | None = None
    patch_targets: int = 2  # targets where exact and attribution patching are compared
    patch_layers: int = 7
    history_tokens: int = 48  # history tokens removed one at a time in the detail figure
    min_recall: float = 0.5  # the operating point: best precision at this recall
    smoke: bool = False  # a smaller run (labelled as a smoke run in the report)
    # seed (the split of users and texts into selection and report sides), batch size
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        self.run = as_section(self.run, RunSection)
        if min(self.n_history, self.targets_per_user, self.patch_layers) < 1:
            raise ValueError("n_history, targets_per_user and patch_layers must be >= 1")
        if self.max_users is not None and self.max_users < 2:
            raise ValueError("max_users must be >= 2 (half the users choose, half are scored)")
        if self.patch_targets < 0 or not 0 < self.min_recall <= 1:
            raise ValueError("patch_targets >= 0 and min_recall in (0, 1] are needed")


def _best(curve: pd.DataFrame, min_recall: float) -> dict[str, Any]:
    """Highest precision at recall >= ``min_recall`` (else the best F1), over all estimators."""
    c = curve.dropna(subset=["precision", "recall"])
    ok = c[c["recall"] >= min_recall]
    if not ok.empty:
        row = ok.loc[ok["precision"].idxmax()]
    else:
        f1 = 2 * c["precision"] * c["recall"] / (c["precision"] + c["recall"]).replace(0, np.nan)
        row = c.loc[f1.idxmax()]
    return {k: (float(v) if isinstance(v, int | float | np.number) else v) for k, v in row.items()}


def _sides(tokens: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(select, report) row masks: the ``split`` column the study wrote (users and texts both
    disjoint), else every other user (sorted) selects and the rest report."""
    if "split" in tokens:
        return tokens["split"] == "select", tokens["split"] == "report"
    names = sorted(tokens["user"].unique())
    tune = tokens["user"].isin(names[::2])
    return tune, ~tune


NEXTQUILL = "none · p-diff"  # NextQuill's score: P(token | history) - P(token | no history)
NEXTQUILL_PUBLISHED = 0.05  # NextQuill's own threshold (SteerXConfig's default selection)
POSITION = "position · first k"  # the position-only rule: a response's first k tokens
PLACEBO_ESTIMATORS = ("placebo · p-diff", "placebo · log-ratio")
SELECTION_ESTIMATORS = tuple(
    e for e in ESTIMATORS if e != NEXTQUILL and e not in PLACEBO_ESTIMATORS
)
"""What SteerX's selection is chosen from: every estimator that is not itself a baseline
(so "chosen − baseline" never compares a rule with itself)."""


def _with_position_score(tokens: pd.DataFrame) -> pd.DataFrame:
    """``tokens`` with the position rule's score (``-position``: ``> 0.5 - k`` selects the
    first k tokens of each response)."""
    if POSITION in tokens or "position" not in tokens:
        return tokens
    return tokens.assign(**{POSITION: -tokens["position"].astype(float)})


def _position_curve(tokens: pd.DataFrame) -> pd.DataFrame:
    top = int(tokens["position"].max()) + 1 if len(tokens) else 1
    return pr_curve(tokens, {POSITION: [0.5 - k for k in range(1, top + 1)]})


def tuned_rules(select: pd.DataFrame, min_recall: float) -> dict[str, dict[str, Any]]:
    """Every rule the page reports, each tuned on the selection side by the one criterion
    (highest precision at recall >= ``min_recall``): the best of ``SELECTION_ESTIMATORS``
    (SteerX's selection), NextQuill's score with its threshold tuned, the best placebo-controlled
    estimator (another user's history as the counterfactual), and the position-only rule
    (first k tokens). The base rate (every token) needs no tuning."""
    curve = pr_curve(select)
    rules = {
        "chosen": _best(curve[curve["estimator"].isin(SELECTION_ESTIMATORS)], min_recall),
        "nextquill": _best(curve[curve["estimator"] == NEXTQUILL], min_recall),
        "placebo": _best(curve[curve["estimator"].isin(PLACEBO_ESTIMATORS)], min_recall),
    }
    if "position" in select:
        rules["position"] = _best(_position_curve(_with_position_score(select)), min_recall)
    return rules


RULE_LABELS = {
    "chosen": "SteerX selection (best estimator, tuned)",
    "nextquill": "NextQuill score (no history, p-diff), threshold tuned",
    "nextquill_published": "NextQuill rule as published (p-diff > 0.05, untuned)",
    "placebo": "placebo-controlled (another user's history), tuned",
    "position": "position only (first k tokens), k tuned",
    "base_rate": "base rate (every token)",
}
"""One name per rule, on the page and in ``summary["token_baselines"]``."""


def selection_scores(
    tokens: pd.DataFrame,
    rules: dict[str, tuple[str | None, float]],
    *,
    reference: str = "chosen",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Precision and recall of each rule (``name -> (score column, threshold)``: a token is
    selected when its score > threshold; column ``None`` selects every token, the base rate)
    over ``tokens``, each with a two-stage bootstrap (users, then their tokens) and ``n``
    users (no interval below ``MIN_CLUSTERS``), and every other rule's paired difference
    from ``reference`` (``precision_minus`` / ``recall_minus``: reference − rule) on the same
    resamples."""
    truth = tokens["planted"].to_numpy(bool)
    names = list(rules)
    if reference not in rules:
        raise ValueError(f"reference {reference!r} is not among the rules {names}")
    sels = [
        np.ones(len(tokens), bool) if col is None else tokens[col].to_numpy(float) > th
        for col, th in rules.values()
    ]
    units = tokens["user"].astype(str).to_numpy()
    n, ref = len(set(units)), names.index(reference)

    def ratios(idx: np.ndarray | slice) -> np.ndarray:
        t = truth[idx]
        pr = []
        for sel in sels:
            s_, tp = sel[idx], float((t & sel[idx]).sum())
            pr.append((tp / s_.sum() if s_.sum() else np.nan, tp / t.sum() if t.sum() else np.nan))
        a = np.array(pr)
        return np.concatenate([a.ravel(), (a[ref] - a).ravel()])

    point = ratios(slice(None))
    boots = np.array([ratios(i) for i in cluster_resamples(units, n_boot=n_boot, seed=seed)])
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for j, name in enumerate(names):
        row: dict[str, dict[str, Any]] = {}
        cols = {"precision": 2 * j, "recall": 2 * j + 1}
        if name != reference:
            off = 2 * len(names)
            cols |= {"precision_minus": off + 2 * j, "recall_minus": off + 2 * j + 1}
        for key, c in cols.items():
            iv = t_interval(point[c], boots[:, c], n) if boots.size else (np.nan, np.nan)
            row[key] = reported(point[c], *iv, n, "user")
        row["selected"] = {"mean": round(float(sels[j].mean()), 5) if truth.size else None, "n": n}
        out[name] = row
    return out


def _rule_of(pick: dict[str, Any]) -> tuple[str, float]:
    return str(pick["estimator"]), float(pick["threshold"])


def score_tokens(
    tokens: pd.DataFrame,
    min_recall: float = 0.5,
    *,
    seed: int = 0,
    chosen: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """PR curves; every rule (``tuned_rules``) tuned on the selection side (or given as
    ``chosen``, e.g. the picks made against another truth) and scored on the disjoint report
    side (``_sides``), so no reported number is picked on the tokens it reports; beside the
    chosen rule, its baselines on the same report side (NextQuill tuned and as published,
    placebo-controlled, position only, base rate) with the paired differences. The curves,
    per-attribute recall and per-group curves are of the report side."""
    tokens = _with_position_score(tokens)
    select, report = _sides(tokens)
    if not select.any() or not report.any():
        raise ValueError("token scoring needs tokens on both the selection and report sides")
    picks = chosen or tuned_rules(tokens[select], min_recall)
    rep = tokens[report]
    rules: dict[str, tuple[str | None, float]] = {k: _rule_of(v) for k, v in picks.items()}
    rules["nextquill_published"] = (NEXTQUILL, NEXTQUILL_PUBLISHED)
    rules["base_rate"] = (None, 0.0)
    scores = selection_scores(rep, rules, seed=seed)
    best = picks["chosen"]
    sel = rep[best["estimator"]] > best["threshold"]
    return {
        "tokens": tokens,
        "curve": pr_curve(rep),
        "planted_share": float(tokens["planted"].mean()),
        "chosen_on_selection": best,
        "picks": picks,
        "report": {k: scores["chosen"][k] for k in ("precision", "recall", "selected")},
        "baseline": {k: scores["nextquill"][k] for k in ("precision", "recall")},
        "minus_baseline": {
            "precision": scores["nextquill"]["precision_minus"],
            "recall": scores["nextquill"]["recall_minus"],
        },
        "rules": {
            name: {
                "label": RULE_LABELS[name],
                "estimator": col,
                "threshold": th,
                **({"k": round(0.5 - th)} if col == POSITION else {}),
                **scores[name],
            }
            for name, (col, th) in rules.items()
        },
        "n_select_targets": _targets(tokens[select]),
        "n_report_targets": _targets(rep),
        "n_select_users": int(tokens[select]["user"].nunique()),
        "n_report_users": int(rep["user"].nunique()),
        "recall_by_attribute": {
            str(a): float(sel[part.index].mean())
            for a, part in rep[rep["planted"]].groupby("attribute")
        },
        "curve_by_group": pr_curve(rep, by="group").to_dict(orient="records"),
    }


def _targets(tokens: pd.DataFrame) -> int:
    cols = [c for c in ("user", "text_id") if c in tokens]
    return int(tokens[cols].drop_duplicates().shape[0]) if cols else 0


def _detail(model: HookedModel, q: Any, eff: Any, cfg: TokenEffectsConfig) -> dict[str, Any]:
    """One response in detail: its tokens by effect, which history item drives them, and
    which history token (``eff``: its full-history vs no-history effects, already scored)."""
    items = item_effects(
        model,
        prompt=q.prompt,
        response=q.response,
        history=list(q.history),
        batch_size=cfg.run.batch_size,
        target=eff,
    )
    tok = history_token_effects(
        model,
        prompt=q.prompt,
        response=q.response,
        history=list(q.history),
        mode="remove",
        max_tokens=cfg.history_tokens,
        batch_size=cfg.run.batch_size,
        target=eff,
    )
    return {
        "user": q.user_id,
        "tokens": list(eff.tokens),
        "frame": eff.to_frame()
        .assign(planted=[bool(x) for x in planted_labels(eff, q.spans)])
        .to_dict(orient="list"),
        "items": [it[0]["content"][:40] for it in items.items],
        "item_effect": items.effect.tolist(),
        "history_tokens": list(tok.history_tokens),
        "history_token_log_ratio": tok.log_ratio.tolist(),
    }


def _patching(
    model: HookedModel, queries: list[Any], cfg: TokenEffectsConfig
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Exact activation patching against attribution patching (1 and 8 steps), on the
    ``patch_targets`` shortest responses (exact patching runs one pass per layer x token)."""
    n_layers = model.cfg.n_layers
    layers = sorted({int(x) for x in np.linspace(0, n_layers - 1, cfg.patch_layers)})
    agreement, heat = [], None
    shortest = sorted(range(len(queries)), key=lambda i: (len(queries[i].response), i))
    for j in shortest[: cfg.patch_targets]:
        q = queries[j]
        args = dict(prompt=q.prompt, response=q.response, history=list(q.history), layers=layers)
        t1 = time.perf_counter()
        exact = activation_patching(model, batch_size=cfg.run.batch_size, **args)
        t_exact = time.perf_counter() - t1
        for steps in (1, 8):
            t1 = time.perf_counter()
            est = attribution_patching(model, steps=steps, **args)
            agreement.append(
                {
                    "target": j,
                    "steps": steps,
                    "seconds": time.perf_counter() - t1,
                    "exact_seconds": t_exact,
                    **rank_agreement(exact.layer_position(), est.layer_position()),
                }
            )
        if heat is None:
            heat = {
                "tokens": list(exact.tokens),
                "layers": layers,
                "share_restored": exact.layer_position().tolist(),
            }
    return agreement, heat


def _spearman(agreement: list[dict[str, Any]]) -> dict[str, float]:
    """Mean Spearman agreement of attribution with exact patching, per number of steps."""
    agree = pd.DataFrame(agreement)
    return (
        {f"steps={s}": float(p["spearman"].mean()) for s, p in agree.groupby("steps")}
        if not agree.empty
        else {}
    )


def _record_estimator(
    results: Path,
    queries: list[Any],
    user_side: dict[str, str],
    chosen: str,
    cfg: TokenEffectsConfig,
    picks: dict[str, dict[str, Any]],
) -> None:
    """Record the estimator chosen on the selection side, every baseline rule tuned there
    alike (``baselines``: NextQuill's threshold, the placebo estimator, the position rule's
    k), and the split they were chosen on."""
    texts = {
        side: sorted({text_id(q.prompt) for q in queries if user_side[q.user_id] == side})
        for side in ("select", "report")
    }
    users_by = {
        side: sorted(u for u in {q.user_id for q in queries} if user_side[u] == side)
        for side in ("select", "report")
    }
    record_selection(
        results,
        "token_estimator",
        Split(texts["select"], texts["report"], "text", {"users": users_by}),
        chosen,
        criterion=f"highest precision at recall >= {cfg.min_recall:g} on the selection side "
        "(completed truth), for the chosen rule and every baseline alike",
        baselines={
            name: f"{p['estimator']} > {float(p['threshold']):g}"
            for name, p in picks.items()
            if name != "chosen"
        },
    )


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}


def _summary_keys(
    scored: dict[str, dict[str, Any]],
    chosen: str,
    spearman: dict[str, float],
    cfg: TokenEffectsConfig,
    n_targets: int,
) -> dict[str, Any]:
    """The keys the study adds to ``results/summary.json``."""
    done, planted = scored["completed"], scored["planted"]
    keys: dict[str, Any] = {"token_estimator": chosen}
    for truth, res in (("completed", done), ("planted", planted)):
        suffix = "" if truth == "completed" else "_planted"
        keys[f"token_precision{suffix}"] = {**res["report"]["precision"], "truth": truth}
        keys[f"token_recall{suffix}"] = {**res["report"]["recall"], "truth": truth}
        keys[f"token_precision_baseline{suffix}"] = {
            **res["baseline"]["precision"],
            "truth": truth,
        }
        keys[f"token_recall_baseline{suffix}"] = {**res["baseline"]["recall"], "truth": truth}
        for what in ("precision", "recall"):  # the chosen rule minus NextQuill's, paired
            keys[f"token_{what}_minus_baseline{suffix}"] = {
                **res["minus_baseline"][what],
                "truth": truth,
            }
    keys.update(
        {
            "token_truth": "completed (planted cue spans + every word the attribute measures count)",
            # every rule tuned on the selection side, scored on the report side, beside the
            # chosen one (paired differences: chosen − rule)
            "token_baselines": {
                truth: {name: _rounded(row) for name, row in res["rules"].items()}
                for truth, res in (("planted", planted), ("completed", done))
            },
            "attribution_spearman": spearman,
            "token_effects_smoke_run": cfg.smoke,
            "token_effects_targets": n_targets,
            "token_effects_report_targets": done["n_report_targets"],
            "token_effects_report_users": done["n_report_users"],
        }
    )
    return keys


def token_effect_study(
    model: HookedModel,
    dataset: PrismDataset,
    config: TokenEffectsConfig | None = None,
    *,
    out: str | Path = ".",
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Run the study on a loaded model and simulated set; write its files under ``out``.

    Returns the summary keys it added to ``results/summary.json``.
    """
    t0 = time.perf_counter()
    cfg = config or TokenEffectsConfig()
    names = sorted(dataset.users)[: cfg.max_users] if cfg.max_users else sorted(dataset.users)
    # users every other (sorted) and prompts by a seeded hash: a user's targets are the
    # prompts of its own side, so the selection and report sides share neither users nor
    # response texts (simulated users answer the same pool of responses)
    user_side = {u: ("select" if i % 2 == 0 else "report") for i, u in enumerate(names)}

    def keep(user: str, prompt: str) -> bool:
        return user_side.get(user) == split_parity(text_id(prompt), cfg.run.seed)

    kw: dict[str, Any] = dict(
        n_history=cfg.n_history, targets_per_user=cfg.targets_per_user, users=names, keep=keep
    )
    queries = user_queries(dataset, **kw)
    sides = {user_side[q.user_id] for q in queries}
    if sides != {"select", "report"}:
        raise ValueError(
            f"the token-effect targets fall on {sorted(sides) or 'no'} side(s) only: use more "
            "users (max_users) or targets per user, so both the selection and report sides "
            "have targets"
        )
    run: dict[str, Any] = dict(batch_size=cfg.run.batch_size, progress_bar=progress_bar)
    both = batch_history_effects(  # one call: the with-history pass is shared
        model,
        [(q.prompt, q.response, q.history, None) for q in queries]
        + [(q.prompt, q.response, q.history, q.placebo) for q in queries],
        **run,
    )
    none, placebo = both[: len(queries)], both[len(queries) :]

    def frame(truth: Truth) -> pd.DataFrame:
        tokens = estimator_scores(user_queries(dataset, truth=truth, **kw), none, placebo)
        return tokens.assign(split=tokens["user"].map(user_side))

    # one pick (on the completed truth's selection side) scored against both truths
    completed = score_tokens(frame("completed"), cfg.min_recall, seed=cfg.run.seed)
    scored = {
        "completed": completed,
        "planted": score_tokens(frame("planted"), seed=cfg.run.seed, chosen=completed["picks"]),
    }
    results = Path(out) / "results"
    results.mkdir(parents=True, exist_ok=True)
    done = scored["completed"]
    done["tokens"].to_csv(results / "steerx_tokens.csv", index=False)
    done["curve"].to_csv(results / "steerx_pr_curve.csv", index=False)
    k = int(np.argmax([len(q.spans) for q in queries]))
    detail = _detail(model, queries[k], none[k], cfg)
    agreement, heat = _patching(model, queries, cfg)
    spearman = _spearman(agreement)
    report = {
        "model": model_name(model),
        "data": dataset.source,
        "simulated": dataset.is_simulated,
        "reconstruction": RECONSTRUCTION,
        "config": asdict(cfg),
        "n_targets": len(queries),
        "n_users": len({q.user_id for q in queries}),
        "n_tokens": len(done["tokens"]),
        **{
            truth: {k: v for k, v in res.items() if k not in ("tokens", "curve")}
            for truth, res in scored.items()
        },
        "split": "users every other (sorted), texts by a seeded hash of the prompt; each "
        "user's targets from its own side's prompts",
        "attribution": agreement,
        "attribution_spearman": spearman,
        "detail": detail,
        "patching": heat,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(results / "steerx_effects.json", report)
    chosen = "{estimator} > {threshold:g}".format(**done["chosen_on_selection"])
    _record_estimator(results, queries, user_side, chosen, cfg, done["picks"])
    keys = _summary_keys(scored, chosen, spearman, cfg, len(queries))
    update_json(results / "summary.json", keys)
    return keys
