"""Side effects on neutral text, per method and strength: mean per-token KL of the steered
from the unsteered next-token distribution, and perplexity of the text under steering, each
with a bootstrap interval over texts (``steerlens.run.divergence`` measures the rows)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["side_effect_table"]

_NEED = ("method", "text_id", "kl", "nll", "n_tokens")


def side_effect_table(
    rows: pd.DataFrame,
    *,
    by: Sequence[str] = ("method", "alpha"),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per ``by`` group: ``kl`` (mean over texts of the per-token KL, each text first
    averaged over users) and ``ppl`` (exp of the total NLL over the total tokens), with
    ``*_low``/``*_high`` percentile intervals from one bootstrap over texts."""
    missing = [c for c in (*_NEED, *by) if c not in rows]
    if missing:
        raise ValueError(f"side-effect rows need columns {missing}")
    out = []
    for key, part in rows.groupby(list(by), sort=True):
        per = part.groupby("text_id").agg(
            kl=("kl", "mean"), nll=("nll", "sum"), n=("n_tokens", "sum")
        )
        kl, nll, n = (per[c].to_numpy(float) for c in ("kl", "nll", "n"))
        idx = np.random.default_rng(seed).integers(0, len(per), size=(n_boot, len(per)))
        boot_kl = kl[idx].mean(1)
        boot_ppl = np.exp(nll[idx].sum(1) / n[idx].sum(1))
        keys = key if isinstance(key, tuple) else (key,)
        out.append(
            {
                **dict(zip(by, keys, strict=True)),
                "kl": float(kl.mean()),
                "kl_low": float(np.percentile(boot_kl, 2.5)),
                "kl_high": float(np.percentile(boot_kl, 97.5)),
                "ppl": float(np.exp(nll.sum() / n.sum())),
                "ppl_low": float(np.percentile(boot_ppl, 2.5)),
                "ppl_high": float(np.percentile(boot_ppl, 97.5)),
                "n_texts": len(per),
                "n_users": int(part["user"].nunique()) if "user" in part else 1,
            }
        )
    return pd.DataFrame(out)
