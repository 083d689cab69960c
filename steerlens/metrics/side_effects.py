"""Side effects on neutral text, per method and strength: mean per-token KL of the steered
from the unsteered next-token distribution, and perplexity of the text under steering, each
with a bootstrap interval over the units that vary (users then texts, or texts for one
vector; ``steerlens.run.divergence`` measures the rows)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerlens.metrics.stats import MIN_CLUSTERS, cluster_resamples

__all__ = ["side_effect_table"]

_NEED = ("method", "text_id", "kl", "nll", "n_tokens")


def _stat(
    idx: np.ndarray | slice,
    codes: np.ndarray,
    n_texts: int,
    kl: np.ndarray,
    nll: np.ndarray,
    n: np.ndarray,
) -> tuple[float, float]:
    """(mean over texts of each text's mean KL, perplexity pooling every token) of rows."""
    c = codes[idx]
    cnt = np.bincount(c, minlength=n_texts)
    per_text = np.bincount(c, kl[idx], minlength=n_texts)[cnt > 0] / cnt[cnt > 0]
    return float(per_text.mean()), float(np.exp(nll[idx].sum() / n[idx].sum()))


def side_effect_table(
    rows: pd.DataFrame,
    *,
    by: Sequence[str] = ("method", "alpha"),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per ``by`` group: ``kl`` (mean over texts of the per-token KL, each text first
    averaged over users) and ``ppl`` (exp of the total NLL over the total tokens), with
    ``*_low``/``*_high`` percentile intervals from one two-stage bootstrap over the units that
    vary: users, then their texts, where a group holds several users' vectors; texts where it
    holds one vector (``unit``, ``n``). Intervals are withheld (NaN) below ``MIN_CLUSTERS``."""
    missing = [c for c in (*_NEED, *by) if c not in rows]
    if missing:
        raise ValueError(f"side-effect rows need columns {missing}")
    out = []
    for key, part in rows.groupby(list(by), sort=True):
        users = part["user"].astype(str).to_numpy() if "user" in part else np.array(["*"])
        many = len(set(users)) > 1
        texts, codes = np.unique(part["text_id"].to_numpy(), return_inverse=True)
        kl, nll, n = (part[c].to_numpy(float) for c in ("kl", "nll", "n_tokens"))
        units = users if many else part["text_id"].astype(str).to_numpy()
        n_units = len(set(units))
        boots = np.array(
            [
                _stat(i, codes, texts.size, kl, nll, n)
                for i in cluster_resamples(units, n_boot=n_boot, seed=seed)
            ]
        )
        kl_point, ppl_point = _stat(slice(None), codes, texts.size, kl, nll, n)
        ok = n_units >= MIN_CLUSTERS
        keys = key if isinstance(key, tuple) else (key,)
        out.append(
            {
                **dict(zip(by, keys, strict=True)),
                "kl": kl_point,
                "kl_low": float(np.percentile(boots[:, 0], 2.5)) if ok else np.nan,
                "kl_high": float(np.percentile(boots[:, 0], 97.5)) if ok else np.nan,
                "ppl": ppl_point,
                "ppl_low": float(np.percentile(boots[:, 1], 2.5)) if ok else np.nan,
                "ppl_high": float(np.percentile(boots[:, 1], 97.5)) if ok else np.nan,
                "n": n_units,
                "unit": "user" if many else "text",
                "n_texts": int(texts.size),
                "n_users": len(set(users)),
            }
        )
    return pd.DataFrame(out)
