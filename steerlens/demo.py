"""The main job (``steerlens demo``): population CAA on a PRISM-format set, an alpha sweep,
toxicity MAE against each user's preferred response, perplexity, selectivity, figures.

On the default (embedded SmolLM2-135M-Instruct, simulated PRISM demo set) this is a
small-model, simulated-data rehearsal of the CAA-on-PRISM study; its numbers are not the
study's Llama-3.1-8B / real-PRISM results.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    data: str = "demo"
    out: str = "."
    quick: bool = False
    seed: int = 0
    train_pairs: int = 200  # the study used 200 PRISM records
    test_prompts: int = 48
    # Scaled to a population mean-difference vector on 7 layers of the embedded model: from
    # alpha 2 on, SmolLM2-135M collapses into repetition (the study's population range on
    # Llama-3.1-8B was likewise below 1: 0.3-0.6).
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    max_new_tokens: int = 48
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.quick:
            self.train_pairs, self.test_prompts, self.max_new_tokens = 64, 16, 24
            self.alphas = [0.0, 0.5, 1.0]
        if 0.0 not in self.alphas:
            raise ValueError("alphas must include 0.0, the unsteered baseline")
        if self.train_pairs < 1 or self.test_prompts < 1:
            raise ValueError("train_pairs and test_prompts must be >= 1")


def _test_rows(ds: Any, test_pairs: list[Any], n: int, seed: int) -> list[dict[str, Any]]:
    """One row per held-out interaction: prompt, category, the user's preferred response."""
    seen: dict[str, dict[str, Any]] = {}
    for p in test_pairs:
        if p.turn == 0 and p.interaction_id not in seen:
            seen[p.interaction_id] = {
                "interaction_id": p.interaction_id,
                "user_id": p.user_id,
                "category": p.category,
                "prompt": p.prompt,
                "preferred": p.chosen,
            }
    rows = sorted(seen.values(), key=lambda r: r["interaction_id"])
    random.Random(seed).shuffle(rows)
    # stratify by category so that the selectivity view has every row
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    out: list[dict[str, Any]] = []
    while len(out) < min(n, len(rows)):
        for cat in sorted(by_cat):
            if by_cat[cat] and len(out) < n:
                out.append(by_cat[cat].pop())
    return out


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    import steerlens as sl
    from steerlens.evaluation.metrics import (
        corpus_distinct_n,
        degenerate,
        distinct_n,
        perplexity,
        toxicity_abs_error,
    )
    from steerlens.evaluation.stats import bootstrap_interval
    from steerlens.evaluation.toxicity import get_scorer
    from steerlens.methods import mean_difference
    from steerlens.plots import dataset_overview, dose_response, save_figure, selectivity_heatmap

    t0 = time.perf_counter()
    out = Path(cfg.out)
    results, figures = out / "results", out / "figures"
    results.mkdir(parents=True, exist_ok=True)
    model = sl.load_model(cfg.model)
    ds = sl.data.load_prism(cfg.data)
    logger.info("%r", ds)
    train, test = ds.split(held_out=0.34, seed=cfg.seed, turn0_only=True)
    train_sel = random.Random(cfg.seed).sample(train, min(cfg.train_pairs, len(train)))
    layers = sl.default_layers(model)
    vec = mean_difference(model, train_sel, layers, batch_size=cfg.batch_size)
    vec.metadata["data"] = ds.source
    vec.save(results / "population_caa.safetensors")

    rows = _test_rows(ds, test, cfg.test_prompts, cfg.seed)
    grid = [(r, a) for r in rows for a in cfg.alphas]
    gen = sl.generate(
        model,
        [r["prompt"] for r, _ in grid],
        steering=vec,
        alpha=[a for _, a in grid],
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        progress_bar=True,
        return_tokens=True,
    )
    assert isinstance(gen, sl.Generation)
    texts = gen.texts
    scorer = get_scorer()
    tox = scorer(texts)
    pref_tox = scorer([r["preferred"] for r, _ in grid])
    # perplexity of the generated token ids in the context they were generated in (the same
    # prompt formatting), under the unsteered model
    lps = sl.continuation_logprobs(
        model, [r["prompt"] for r, _ in grid], gen.tokens, batch_size=cfg.batch_size
    )
    nll = [float(-lp.mean()) if lp.numel() else float("nan") for lp in lps]
    sweep = pd.DataFrame(
        [
            {
                **{k: r[k] for k in ("interaction_id", "user_id", "category", "prompt")},
                "alpha": a,
                "generation": t,
                "toxicity": x,
                "preferred_toxicity": p,
                "nll": n,
            }
            for (r, a), t, x, p, n in zip(grid, texts, tox, pref_tox, nll, strict=True)
        ]
    )
    sweep["abs_error"] = toxicity_abs_error(sweep["toxicity"], sweep["preferred_toxicity"])
    sweep["perplexity"] = perplexity(sweep["nll"].tolist())
    sweep["distinct_2"] = distinct_n(sweep["generation"].fillna("").tolist(), 2)
    sweep["empty"] = [not t.strip() for t in texts]
    sweep["degenerate"] = degenerate(texts)
    sweep.to_csv(results / "sweep.csv", index=False)

    by_alpha = (
        sweep.groupby("alpha")
        .agg(
            mae=("abs_error", "mean"),
            ppl=("perplexity", "median"),
            toxicity=("toxicity", "mean"),
            distinct_2=("distinct_2", "mean"),
            empty_share=("empty", "mean"),
            degenerate_share=("degenerate", "mean"),
        )
        .reset_index()
    )
    for a, part in sweep.groupby("alpha"):  # intervals over prompts, corpus-level distinct-2
        lo, hi = bootstrap_interval(part["abs_error"].to_numpy(), seed=cfg.seed)
        by_alpha.loc[by_alpha["alpha"] == a, ["mae_low", "mae_high"]] = [lo, hi]
        by_alpha.loc[by_alpha["alpha"] == a, "distinct_2_corpus"] = corpus_distinct_n(
            part["generation"].fillna("").tolist()
        )
    base = float(by_alpha.loc[by_alpha["alpha"] == 0.0, "mae"].iloc[0])
    by_alpha["mae_change_pct"] = 100 * (by_alpha["mae"] - base) / base if base else 0.0
    written = []
    written += save_figure(
        dose_response(
            sweep,
            title=f"Dose-response · population CAA · {cfg.model} · "
            f"{'simulated demo set' if ds.is_simulated else ds.source}",
        ),
        figures / "dose_response",
    )
    written += save_figure(selectivity_heatmap(sweep), figures / "selectivity")
    if ds.ground_truth is not None:
        pairs_df = pd.DataFrame([asdict(p) for p in ds.preference_pairs()])
        written += save_figure(
            dataset_overview(ds.ground_truth, pairs_df), figures / "dataset_overview"
        )
    by_cat = sweep.groupby(["category", "alpha"])["abs_error"].mean().unstack("alpha")
    by_category = (100 * by_cat.sub(by_cat[0.0], axis=0).div(by_cat[0.0], axis=0)).round(2)
    summary = {
        "model": cfg.model,
        "data": ds.source,
        "data_is_simulated": ds.is_simulated,
        "config": asdict(cfg),
        "layers": layers,
        "vector_norms": vec.norms(),
        "n_train_pairs": len(train_sel),
        "n_test_prompts": len(rows),
        "by_alpha": by_alpha.round(5).to_dict(orient="records"),
        "mae_change_pct_by_category": {
            cat: {str(a): v for a, v in row.items()} for cat, row in by_category.iterrows()
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "files": [str(p) for p in written] + [str(results / "sweep.csv")],
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
