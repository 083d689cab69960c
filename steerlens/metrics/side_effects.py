"""Side effects on neutral text, per method and strength: mean per-token KL of the steered
from the unsteered next-token distribution, and perplexity of the text under steering, each
with a bootstrap interval over the units that vary (users then texts, or texts for one
vector; ``steerlens.run.divergence`` measures the rows)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerlens.metrics.stats import MIN_CLUSTERS, crossed_k, crossed_weights, t_interval

__all__ = ["side_effect_table"]

_NEED = ("method", "text_id", "kl", "nll", "n_tokens")


def _mean_of_text_means(
    codes: np.ndarray, kl: np.ndarray, wu: np.ndarray, wt: np.ndarray
) -> np.ndarray:
    """Per resample (rows of the weights): the mean over texts (each as often as drawn, ``wt``)
    of each text's mean KL over its users (each as often as drawn, ``wu``)."""
    n_texts = int(codes.max()) + 1
    onehot = np.eye(n_texts)[codes]  # rows x texts
    num, den = (wu * kl) @ onehot, wu @ onehot
    draws = (wt @ onehot) / np.maximum(onehot.sum(0), 1)  # each text's draw count
    with np.errstate(divide="ignore", invalid="ignore"):
        per_text = np.where(den > 0, num / den, 0.0)
        return (draws * per_text * (den > 0)).sum(1) / (draws * (den > 0)).sum(1)


def _stats(
    codes: np.ndarray,
    kl: np.ndarray,
    nll: np.ndarray,
    n: np.ndarray,
    wu: np.ndarray,
    wt: np.ndarray,
) -> np.ndarray:
    """``[resamples, 2]``: (mean of text means of KL, perplexity pooling every token), rows
    weighted by their user's (``wu``) times their text's (``wt``) draw counts."""
    w = wu * wt
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample with no rows: NaN
        ppl = np.exp((w @ nll) / (w @ n))
    return np.stack([_mean_of_text_means(codes, kl, wu, wt), ppl], axis=1)


def side_effect_table(
    rows: pd.DataFrame,
    *,
    by: Sequence[str] = ("method", "alpha"),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per ``by`` group: ``kl`` (mean per-token KL over its rows) and ``ppl`` (exp of
    the total NLL over the total tokens), with ``*_low``/``*_high`` intervals
    (``stats.t_interval``) from one bootstrap over the units that vary: users and texts
    resampled independently (crossed: every user's vector meets the same texts) where a group
    holds several users' vectors; texts where it holds one vector (``unit``, ``n``: users or
    texts). Intervals are withheld (NaN) below ``MIN_CLUSTERS``."""
    missing = [c for c in (*_NEED, *by) if c not in rows]
    if missing:
        raise ValueError(f"side-effect rows need columns {missing}")
    out = []
    for key, part in rows.groupby(list(by), sort=True):
        users = part["user"].astype(str).to_numpy() if "user" in part else np.array(["*"])
        many = len(set(users)) > 1
        text_ids = part["text_id"].astype(str).to_numpy()
        codes = pd.factorize(pd.Series(text_ids))[0]
        kl, nll, n = (part[c].to_numpy(float) for c in ("kl", "nll", "n_tokens"))
        # several users' vectors meet the same texts: users and texts both resampled
        wu, wt = crossed_weights(
            users if many else np.zeros(len(part)), text_ids, n_boot=n_boot, seed=seed
        )
        ones = np.ones_like(wu)
        data = (codes, kl, nll, n)
        boots, by_user, by_text = (
            _stats(*data, a, b) for a, b in ((wu, wt), (wu, ones), (ones, wt))
        )
        kl_point, ppl_point = (float(v) for v in _stats(*data, ones[:1], ones[:1])[0])
        n_u, n_t = len(set(users)), len(set(text_ids))
        n_units = len(set(users)) if many else len(set(text_ids))
        ok = n_units >= MIN_CLUSTERS and n_t >= MIN_CLUSTERS  # texts vary in both designs
        kl_iv, ppl_iv = (
            t_interval(p, boots[:, j], crossed_k(by_user[:, j], by_text[:, j], n_u, n_t))
            if ok
            else (np.nan, np.nan)
            for j, p in enumerate((kl_point, ppl_point))
        )
        keys = key if isinstance(key, tuple) else (key,)
        out.append(
            {
                **dict(zip(by, keys, strict=True)),
                "kl": kl_point,
                "kl_low": kl_iv[0],
                "kl_high": kl_iv[1],
                "ppl": ppl_point,
                "ppl_low": ppl_iv[0],
                "ppl_high": ppl_iv[1],
                "n": n_units,
                "unit": "user" if many else "text",
                "n_texts": len(set(text_ids)),
                "n_users": len(set(users)),
            }
        )
    return pd.DataFrame(out)
