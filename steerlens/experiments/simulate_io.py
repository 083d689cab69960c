"""What a simulated set writes beside its data: the survey rows, JSON lines and the summary
of its users and choices (see ``steerlens.experiments.simulate``)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from steerlens.data.categories import agreement
from steerlens.experiments.simulate_config import (
    SimulationConfig,
)
from steerlens.experiments.simulate_styles import (
    GROUPS,
    STYLES,
)
from steerlens.metrics.attributes import ATTRIBUTES

__all__ = []


def _summary(
    cfg: SimulationConfig,
    model_name: str,
    gen_seconds: float,
    t0: float,
    counts: dict[str, int],
    mean: np.ndarray,
    std: np.ndarray,
    responses: list[dict[str, Any]],
    users: list[dict[str, Any]],
    prompts: dict[str, Any],
) -> dict[str, Any]:
    """The set's summary (``summary.json``, also the head of ``ground_truth.json``)."""
    style_means = {
        s.name: {
            a: round(
                float(np.mean([r["attributes"][a] for r in responses if r["style"] == s.name])), 4
            )
            for a in ATTRIBUTES
        }
        for s in STYLES
    }
    accs = [u["oracle_accuracy"] for u in users if u["oracle_accuracy"] is not None]
    return {
        "simulated": True,
        "description": "Simulated PRISM-format set made by steerlens.experiments.simulate: prompts written for "
        "the project, responses by the model below, simulated users. Not real PRISM data.",
        "config": asdict(cfg),
        "model": model_name,
        "generation_seconds": round(gen_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "counts": counts,
        "attributes": list(ATTRIBUTES),
        "attribute_mean": dict(zip(ATTRIBUTES, mean.round(4).tolist(), strict=True)),
        "attribute_std": dict(zip(ATTRIBUTES, std.round(4).tolist(), strict=True)),
        "style_means": style_means,
        "oracle_accuracy": {
            "mean": round(float(np.mean(accs)), 4),
            "min": min(accs),
            "max": max(accs),
        },
        "categoriser_agreement": {
            k: round(v, 4)
            for k, v in agreement((p["text"], p["category"]) for p in prompts.values()).items()
        },
    }


def _survey_row(
    user: dict[str, Any], cfg: SimulationConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """A survey row that carries the user's group only as a noisy signal."""
    group = user["group"]
    if rng.random() < cfg.survey_swap:  # people describe themselves imperfectly
        others = [g for g in GROUPS if g != group]
        group = others[int(rng.integers(len(others)))]
    texts = GROUPS[group]["paraphrases"]
    wts = user["weights"]

    def stated(value: float) -> int:
        return int(np.clip(round(value + rng.normal(0, cfg.stated_noise)), 1, 100))

    return {
        "user_id": user["user_id"],
        "self_description": texts[int(rng.integers(len(texts)))],
        "system_string": texts[int(rng.integers(len(texts)))],
        "stated_prefs": {
            "safety": stated(50 - 25 * wts["toxicity"] + 15 * wts["caution"]),
            "helpfulness": stated(60 - 20 * wts["refusal"]),
            "fluency": stated(55 + 20 * wts["formality"]),
            "factuality": stated(70),
            "creativity": stated(50 - 15 * wts["formality"]),
        },
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
