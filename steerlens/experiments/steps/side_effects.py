"""Step 3, ``side_effects``: per method and α, the per-token KL of the steered from the
unsteered next-token distribution on neutral held-out text, and its perplexity."""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerlens.experiments.claims import kl_claims
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import (
    _Job,
    _neutral,
    _user_vectors,
)
from steerlens.metrics.side_effects import side_effect_table
from steerlens.metrics.stats import reported
from steerlens.run.divergence import (
    steering_divergence,
)


def _side_effects_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    texts = _neutral(job)[: cfg.side_effect_texts]
    who = _user_vectors(job)
    # one batched call: every user and α a row of each text, which runs unsteered once (and
    # its steered rows start at the first steered block, from that pass's residual)
    alphas = [a for a in cfg.alphas if a != 0.0]
    cells = [(0.0, *who[0])] + [(a, *w) for a in alphas for w in who]
    got = steering_divergence(
        job.model,
        [t for _ in cells for t in texts],
        [v for *_, v in cells for _ in texts],
        [a for a, *_ in cells for _ in texts],
        batch_size=cfg.run.batch_size,
        progress_bar=True,
    )
    rows = []
    for k, (alpha, method, user, _) in enumerate(cells):
        for i in range(len(texts)):
            d = got[k * len(texts) + i]
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
    base, raw = rows[: len(texts)], pd.DataFrame(rows[len(texts) :])
    raw.to_csv(job.results / "side_effects_rows.csv", index=False)
    zero = pd.DataFrame(
        [
            {**d, "method": m, "user": "*", "kl": 0.0}  # α 0: the model itself
            for m in cfg.methods
            for d in base
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


STEP = register_step(
    Step(
        "side_effects",
        _side_effects_step,
        StepInputs(
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
        files=("side_effects_rows.csv", "side_effects.csv"),
        keys=(
            "kl_neutral",
            "neutral_source",
            "neutral_texts",
            "ppl_neutral",
        ),
        claims=kl_claims,
        title="Side effects on neutral text",
    )
)
