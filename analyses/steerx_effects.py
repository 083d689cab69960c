"""SteerX token effects scored against the simulated set's planted truth.

For every simulated user, the causal effect of their history (their other turn-0
conversations) on each token of their chosen responses, against two counterfactuals (no
history: NextQuill; another user's history of the same length: a placebo), as probability
differences and log-ratios. Each estimator's selected tokens are scored against the planted
attribute spans: a precision-recall curve per estimator, per user group and attribute. On a
few targets, exact activation patching is compared with attribution patching (gradient x
activation difference, and integrated gradients).

Writes ``OUT/results/steerx_effects.json`` (and the token table as CSV), adds
``token_precision``, ``token_recall`` (the best estimator and threshold, chosen on half the
users and scored on the other half),
``token_precision_baseline``, ``token_recall_baseline`` (no-history probability difference at
0.05) and ``attribution_spearman`` to ``OUT/results/summary.json``, and figures under
``OUT/figures/``: the PR curves, a response's tokens coloured by effect, the history-item x
target-token and history-token x target-token heatmaps, and the layer x position patching
heatmap.

SteerX's body text was not available: this is a reconstruction on the NextQuill estimator.

Usage: python analyses/steerx_effects.py [--model NAME] [--data demo|FOLDER] [--out DIR]
       [--n-history 4] [--targets-per-user 3] [--max-users N] [--patch-targets 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import steerlens as sl
from steerlens.core._jsonsafe import update_json, write_json
from steerlens.metrics.token_truth import (
    estimator_scores,
    planted_labels,
    pr_curve,
    user_queries,
)
from steerlens.reporting.page import append_links
from steerlens.reporting.plots import effect_heatmap, pr_curves, save_figure, token_effects
from steerlens.steerx import (
    activation_patching,
    attribution_patching,
    batch_history_effects,
    history_token_effects,
    item_effects,
    rank_agreement,
)


def _best(curve: pd.DataFrame, min_recall: float = 0.5) -> dict[str, Any]:
    """Highest precision at recall >= ``min_recall`` (else the best F1), over all estimators."""
    c = curve.dropna(subset=["precision", "recall"])
    ok = c[c["recall"] >= min_recall]
    if not ok.empty:
        row = ok.loc[ok["precision"].idxmax()]
    else:
        f1 = 2 * c["precision"] * c["recall"] / (c["precision"] + c["recall"]).replace(0, np.nan)
        row = c.loc[f1.idxmax()]
    return {k: (float(v) if isinstance(v, int | float | np.number) else v) for k, v in row.items()}


def _score(tokens: pd.DataFrame) -> dict[str, Any]:
    """PR curves; the estimator and threshold chosen on half the users (every other, sorted)
    and scored on the other half, so the headline numbers are not picked on the tokens they
    report; the baseline (no history, p-diff > 0.05) scored on the same held-out half."""
    names = sorted(tokens["user"].unique())
    tune = tokens["user"].isin(names[::2])
    best = _best(pr_curve(tokens[tune]))
    held = pr_curve(tokens[~tune], {best["estimator"]: [best["threshold"]]}).iloc[0]
    base = pr_curve(tokens[~tune], {"none · p-diff": [0.05]}).iloc[0]
    sel = tokens[best["estimator"]] > best["threshold"]
    return {
        "tokens": tokens,
        "curve": pr_curve(tokens),
        "planted_share": float(tokens["planted"].mean()),
        "chosen_on_half": best,
        "held_out_half": {k: float(held[k]) for k in ("precision", "recall", "selected")},
        "baseline": {k: float(base[k]) for k in ("precision", "recall", "selected")},
        "recall_by_attribute": {
            str(a): float(sel[part.index].mean())
            for a, part in tokens[tokens["planted"]].groupby("attribute")
        },
        "curve_by_group": pr_curve(tokens, by="group").to_dict(orient="records"),
    }


def run(
    model: str = "smollm2-135m-instruct",
    data: str = "demo",
    out: str | Path = ".",
    *,
    n_history: int = 4,
    targets_per_user: int = 3,
    max_users: int | None = None,
    patch_targets: int = 2,
    patch_layers: int = 7,
    history_tokens: int = 48,
    batch_size: int = 8,
    progress_bar: bool = True,
) -> dict:
    t0 = time.perf_counter()
    m = sl.load_model(model)
    ds = sl.data.load_prism(data)
    users = sorted(ds.users)[:max_users] if max_users else None
    queries = user_queries(ds, n_history=n_history, targets_per_user=targets_per_user, users=users)
    kw: dict[str, Any] = dict(batch_size=batch_size, progress_bar=progress_bar)
    none = batch_history_effects(
        m, [(q.prompt, q.response, q.history, None) for q in queries], **kw
    )
    placebo = batch_history_effects(
        m, [(q.prompt, q.response, q.history, q.placebo) for q in queries], **kw
    )
    scored = {}
    for truth in ("planted", "completed"):
        spans = user_queries(
            ds, n_history=n_history, targets_per_user=targets_per_user, users=users, truth=truth
        )
        scored[truth] = _score(estimator_scores(spans, none, placebo))
    tokens, curve = scored["completed"]["tokens"], scored["completed"]["curve"]
    results, figures = Path(out) / "results", Path(out) / "figures"
    results.mkdir(parents=True, exist_ok=True)
    tokens.to_csv(results / "steerx_tokens.csv", index=False)
    curve.to_csv(results / "steerx_pr_curve.csv", index=False)
    files = save_figure(
        pr_curves(curve, title=f"Token selection vs completed planted truth · {model}"),
        figures / "steerx_pr",
    )
    # one response in detail: tokens by effect, and which history item drives them
    k = int(np.argmax([len(q.spans) for q in queries]))
    q, eff = queries[k], none[k]
    frame = eff.to_frame().assign(planted=[bool(x) for x in planted_labels(eff, q.spans)])
    files += save_figure(
        token_effects(frame, title=f"{q.user_id}: CE of their history on each token"),
        figures / "steerx_tokens",
    )
    items = item_effects(
        m, prompt=q.prompt, response=q.response, history=list(q.history), batch_size=batch_size
    )
    files += save_figure(
        effect_heatmap(
            items.effect.numpy(),
            x=eff.tokens,
            y=[it[0]["content"][:40] for it in items.items],
            x_title="target token",
            y_title="history item (its prompt)",
            title=f"{q.user_id}: P(y_t | history) − P(y_t | history without item)",
        ),
        figures / "steerx_items",
    )
    tok = history_token_effects(
        m,
        prompt=q.prompt,
        response=q.response,
        history=list(q.history),
        mode="remove",
        max_tokens=history_tokens,
        batch_size=batch_size,
    )
    files += save_figure(
        effect_heatmap(
            tok.log_ratio.numpy(),
            x=eff.tokens,
            y=tok.history_tokens,
            x_title="target token",
            y_title="history token (removed)",
            colorbar="Δ log p",
            title=f"{q.user_id}: log p(y_t | history) − log p(y_t | history without the token)",
        ),
        figures / "steerx_history_tokens",
    )
    # exact patching vs attribution patching on a few targets
    n_layers = m.cfg.n_layers
    layers = sorted({int(x) for x in np.linspace(0, n_layers - 1, patch_layers)})
    agreement = []
    for j in range(min(patch_targets, len(queries))):
        qq = queries[j]
        args = dict(prompt=qq.prompt, response=qq.response, history=list(qq.history), layers=layers)
        t1 = time.perf_counter()
        exact = activation_patching(m, batch_size=batch_size, **args)
        t_exact = time.perf_counter() - t1
        for steps in (1, 8):
            t1 = time.perf_counter()
            est = attribution_patching(m, steps=steps, **args)
            agreement.append(
                {
                    "target": j,
                    "steps": steps,
                    "seconds": time.perf_counter() - t1,
                    "exact_seconds": t_exact,
                    **rank_agreement(exact.layer_position(), est.layer_position()),
                }
            )
        if j == 0:
            files += save_figure(
                effect_heatmap(
                    exact.layer_position().numpy(),
                    x=exact.tokens,
                    y=[str(x) for x in layers],
                    x_title="aligned target position (predicting this token)",
                    y_title="layer (resid_post)",
                    colorbar="share restored",
                    title="Activation patching: share of the history's log-prob effect restored",
                ),
                figures / "steerx_patching",
            )
    agree = pd.DataFrame(agreement)
    spearman = {f"steps={s}": float(part["spearman"].mean()) for s, part in agree.groupby("steps")}
    links = {Path(f).name: Path(f).name for f in files if str(f).endswith(".html")}
    if (figures / "index.html").exists():
        append_links(figures / "index.html", "SteerX token effects (reconstructed)", links)
    report = {
        "model": model,
        "data": data,
        "simulated": ds.is_simulated,
        "reconstruction": "SteerX body text unavailable; NextQuill estimator",
        "n_targets": len(queries),
        "n_tokens": len(tokens),
        **{
            truth: {k: v for k, v in res.items() if k not in ("tokens", "curve")}
            for truth, res in scored.items()
        },
        "attribution": agree.to_dict(orient="records"),
        "attribution_spearman": spearman,
        "seconds": round(time.perf_counter() - t0, 1),
        "files": [str(f) for f in files],
    }
    write_json(results / "steerx_effects.json", report)
    done, planted = scored["completed"], scored["planted"]
    update_json(
        results / "summary.json",
        {
            "token_precision": done["held_out_half"]["precision"],
            "token_recall": done["held_out_half"]["recall"],
            "token_estimator": "{estimator} > {threshold:g}".format(**done["chosen_on_half"]),
            "token_precision_baseline": done["baseline"]["precision"],
            "token_recall_baseline": done["baseline"]["recall"],
            "token_truth": "completed (planted spans + directness openings + attribute words)",
            "token_precision_planted": planted["held_out_half"]["precision"],
            "token_recall_planted": planted["held_out_half"]["recall"],
            "token_precision_baseline_planted": planted["baseline"]["precision"],
            "token_recall_baseline_planted": planted["baseline"]["recall"],
            "attribution_spearman": spearman,
        },
    )
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--out", default=".")
    ap.add_argument("--n-history", type=int, default=4)
    ap.add_argument("--targets-per-user", type=int, default=3)
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--patch-targets", type=int, default=2)
    args = ap.parse_args()
    report = run(
        args.model,
        args.data,
        args.out,
        n_history=args.n_history,
        targets_per_user=args.targets_per_user,
        max_users=args.max_users,
        patch_targets=args.patch_targets,
    )
    print(
        json.dumps(
            {k: report[k] for k in ("planted", "completed", "attribution_spearman", "seconds")},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
