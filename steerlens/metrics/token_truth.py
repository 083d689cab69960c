"""SteerX's token selection scored against the simulated set's planted truth.

Every simulated response carries character spans of the attributes its style planted
(``ground_truth.json``: ``responses[id]["spans"]``). A target token is a true
preference-driven token when it overlaps a span; an estimator's selection is scored by
precision and recall over all tokens of all targets, per threshold (a precision-recall
curve), per estimator/counterfactual, attribute and user group.

Plain data in: the token effects are any objects with ``tokens``, ``offsets`` (character
spans), ``effect`` and ``log_ratio`` (per token; SteerX's ``TokenEffects`` is one).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from steerlens.data.prism import PrismDataset
from steerlens.metrics.attributes import attribute_word_spans

__all__ = [
    "ESTIMATORS",
    "Message",
    "TargetQuery",
    "TokenScores",
    "estimator_scores",
    "planted_labels",
    "pr_curve",
    "response_spans",
    "text_id",
    "user_queries",
]

logger = logging.getLogger(__name__)


Message = dict[str, str]
"""A chat message: ``{"role": ..., "content": ...}``."""


class TokenScores(Protocol):
    """Per token of a target text: its text, character span, and two effect scores."""

    tokens: list[str]
    offsets: list[tuple[int, int]]

    @property
    def effect(self) -> Any:
        """P(token | history) - P(token | counterfactual), per token (array-like)."""

    @property
    def log_ratio(self) -> Any:
        """log P(token | history) - log P(token | counterfactual), per token (array-like)."""


@dataclass(frozen=True)
class TargetQuery:
    """One target (a user's chosen turn-0 response), its history and a placebo history."""

    user_id: str
    group: str
    prompt: str
    response: str
    history: tuple[Message, ...]
    placebo: tuple[Message, ...]
    spans: tuple[tuple[int, int, str], ...]  # (start, end, attribute)


Truth = Literal["planted", "completed"]


def response_spans(
    response: Mapping[str, Any], truth: Truth = "planted"
) -> list[tuple[int, int, str]]:
    """A simulated response's preference-relevant character spans.

    ``"planted"``: the spans the simulator wrote (the cues that carry an attribute, and toxic
    words). ``"completed"`` adds every other word the attribute measures count
    (caveat/safety words, slang and contractions, refusal phrases) — the words the simulated
    users' utility moves with, wherever the model wrote them. Both hold only what the
    utility rewards.
    """
    spans = [(s["start"], s["end"], s["attribute"]) for s in response.get("spans", [])]
    if truth == "planted":
        return spans
    if truth != "completed":
        raise ValueError(f"truth must be 'planted' or 'completed', got {truth!r}")
    spans += list(attribute_word_spans(response["text"]))
    return sorted(spans)


def _spans_by_text(
    ground_truth: Mapping[str, Any], truth: Truth
) -> dict[str, list[tuple[int, int, str]]]:
    return {r["text"]: response_spans(r, truth) for r in ground_truth["responses"].values()}


def user_queries(
    dataset: PrismDataset,
    *,
    n_history: int = 4,
    targets_per_user: int = 3,
    users: Sequence[str] | None = None,
    truth: Truth = "planted",
    keep: Callable[[str, str], bool] | None = None,
) -> list[TargetQuery]:
    """Per user: up to ``targets_per_user`` chosen turn-0 responses as targets, all with one
    history, the user's first ``n_history`` other turn-0 conversations (prompt, chosen
    response; none of them a target of this user), and as placebo the next user's history,
    cut to the same number of conversations; ``truth`` picks the spans (``response_spans``).
    ``keep(user, prompt)``, when given, restricts which conversations may be targets (e.g. a
    split by prompt); the history is drawn from all the others (fewer than ``n_history``
    where the user has fewer; with ``n_history`` > 0 a user with none beyond the targets is
    left out, logged). One history per user (and the placebo another user's own, or its
    beginning) lets a scoring pass run each history once for all the rows it begins
    (``steerlens.run.prefix``)."""
    gt = dataset.ground_truth
    if gt is None or "responses" not in gt:
        raise ValueError("scoring against planted truth needs a simulated set's ground truth")
    spans = _spans_by_text(gt, truth)
    convs: dict[str, list[tuple[str, str]]] = {}
    for p in dataset.preference_pairs(turn0_only=True):
        lst = convs.setdefault(p.user_id, [])
        if (p.prompt, p.chosen) not in lst:
            lst.append((p.prompt, p.chosen))
    order = sorted(convs) if users is None else [u for u in users if u in convs]
    targets: dict[str, list[int]] = {}
    history: dict[str, list[tuple[str, str]]] = {}
    for user in order:
        mine = convs[user]
        allowed = [t for t, (p, _) in enumerate(mine) if keep is None or keep(user, p)]
        targets[user] = allowed[:targets_per_user]
        history[user] = [c for i, c in enumerate(mine) if i not in targets[user]][:n_history]
    # n_history 0 asks for no history (e.g. to list a user's conversations as targets)
    empty = [u for u in order if targets[u] and not history[u]] if n_history > 0 else []
    if empty:
        logger.warning("left out (no conversation beyond the targets for a history): %s", empty)
    out = []
    for k, user in enumerate(order):
        rest = history[user]
        if user in empty:
            continue
        placebo = history[order[(k + 1) % len(order)]][: len(rest)]
        for t in targets[user]:
            prompt, response = convs[user][t]
            out.append(
                TargetQuery(
                    user,
                    gt["users"].get(user, {}).get("group", "unknown"),
                    prompt,
                    response,
                    _messages(rest),
                    _messages(placebo),
                    tuple(spans.get(response, [])),
                )
            )
    return out


def text_id(prompt: str) -> str:
    """A short stable id of a prompt (the unit a token-effect split is drawn on)."""
    return hashlib.sha1(prompt.encode("utf-8"), usedforsecurity=False).hexdigest()[:10]


def _messages(convs: Sequence[tuple[str, str]]) -> tuple[Message, ...]:
    return tuple(
        m
        for prompt, reply in convs
        for m in ({"role": "user", "content": prompt}, {"role": "assistant", "content": reply})
    )


def planted_labels(effects: TokenScores, spans: Sequence[tuple[int, int, str]]) -> list[str]:
    """Per token: the attribute of the first planted span it overlaps, or ``""``."""
    labels = []
    for a, b in effects.offsets:
        hit = next((attr for s, e, attr in spans if a < e and b > s and b > a), "")
        labels.append(hit)
    return labels


def _scores(with_none: TokenScores, with_placebo: TokenScores) -> dict[str, np.ndarray]:
    """Each estimator's per-token score (a token is selected when its score > threshold)."""
    e0, e1 = np.asarray(with_none.effect), np.asarray(with_placebo.effect)
    r0, r1 = np.asarray(with_none.log_ratio), np.asarray(with_placebo.log_ratio)
    return {
        "none · p-diff": e0,  # NextQuill
        "none · log-ratio": r0,
        "placebo · p-diff": e1,
        "placebo · log-ratio": r1,
        "none & placebo · p-diff": np.minimum(e0, e1),
        "none & placebo · log-ratio": np.minimum(r0, r1),
    }


ESTIMATORS = (
    "none · p-diff",
    "none · log-ratio",
    "placebo · p-diff",
    "placebo · log-ratio",
    "none & placebo · p-diff",
    "none & placebo · log-ratio",
)


def estimator_scores(
    queries: Sequence[TargetQuery],
    with_none: Sequence[TokenScores],
    with_placebo: Sequence[TokenScores],
) -> pd.DataFrame:
    """One row per target token: user, group, its position in the response (0 = first
    token), planted attribute (``""`` if none), and each estimator's score."""
    rows = []
    for q, e0, e1 in zip(queries, with_none, with_placebo, strict=True):
        labels = planted_labels(e0, q.spans)
        scores = _scores(e0, e1)
        for i, lab in enumerate(labels):
            rows.append(
                {
                    "user": q.user_id,
                    "group": q.group,
                    "text_id": text_id(q.prompt),
                    "position": i,
                    "token": e0.tokens[i],
                    "attribute": lab,
                    "planted": bool(lab),
                    **{k: float(v[i]) for k, v in scores.items()},
                }
            )
    return pd.DataFrame(rows)


def pr_curve(
    tokens: pd.DataFrame,
    thresholds: Mapping[str, Sequence[float]] | None = None,
    *,
    by: str | None = None,
) -> pd.DataFrame:
    """Precision and recall of every estimator at every threshold (optionally per ``by``
    column value, e.g. ``"group"``); precision is NaN where nothing is selected."""
    thresholds = thresholds or {
        k: (np.linspace(-0.05, 0.5, 23) if "p-diff" in k else np.linspace(-1.0, 6.0, 29)).tolist()
        for k in ESTIMATORS
    }
    parts = [("all", tokens)] if by is None else list(tokens.groupby(by))
    rows = []
    for key, part in parts:
        truth = part["planted"].to_numpy(bool)
        for est, ths in thresholds.items():
            values = part[est].to_numpy(float)
            for th in ths:
                sel = values > th
                tp = int((sel & truth).sum())
                rows.append(
                    {
                        "subset": key,
                        "estimator": est,
                        "threshold": float(th),
                        "selected": int(sel.sum()),
                        "precision": tp / sel.sum() if sel.sum() else float("nan"),
                        "recall": tp / truth.sum() if truth.sum() else float("nan"),
                    }
                )
    return pd.DataFrame(rows)
