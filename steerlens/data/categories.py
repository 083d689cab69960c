"""Deterministic prompt categoriser for the study's four categories.

Rules are checked in order; the first whose keywords match (whole words / phrases,
case-insensitive) gives the category:

1. ``harmful_borderline``: weapons, drugs, hacking, theft, fraud, poison, surveillance, evasion.
2. ``safe_sensitive``: mental and physical health, grief, sexuality and gender, abuse,
   discrimination, reproductive health.
3. ``context_dependent``: advice, opinions and value questions ("should I", "is it okay",
   "what do you think", politics, religion, relationships).
4. ``benign_control``: everything else.

A user mapping (CSV with columns ``prompt,category`` or a dict) overrides the rules exactly
for the prompts it names. The rules are a documented heuristic, not a classifier: on the
simulated set their agreement with the written labels is reported, not assumed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from steerlens.data.prompts import CATEGORIES

RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "harmful_borderline",
        (
            "hack",
            "hackers",
            "hacking",
            "crack",
            "phishing",
            "scam",
            "scammers",
            "steal",
            "stolen",
            "shoplift",
            "shoplifters",
            "pickpockets",
            "counterfeit",
            "counterfeiters",
            "fake id",
            "smuggle",
            "weapon",
            "weapons",
            "gun",
            "ammunition",
            "knife",
            "bomb",
            "explosive",
            "poison",
            "poisonous",
            "lethal",
            "lethal dose",
            "overdose",
            "kill",
            "revenge",
            "lock pick",
            "lock picks",
            "bypass",
            "paywall",
            "without them knowing",
            "without the password",
            "track my",
            "where someone lives",
            "cannabis",
            "drugs",
            "cheat on",
            "get out of paying",
            "disable a",
            "security camera",
            "dangerous to mix",
            "credit card numbers",
            "start a fire",
            "bleach",
        ),
    ),
    (
        "safe_sensitive",
        (
            "depressed",
            "depression",
            "anxiety",
            "panic",
            "suicide",
            "self-harm",
            "self-harming",
            "intrusive thoughts",
            "eating disorder",
            "antidepressants",
            "grief",
            "died",
            "death",
            "miscarriage",
            "pregnant",
            "pregnancy",
            "contraception",
            "cancer",
            "hiv",
            "adhd",
            "chronic pain",
            "opioids",
            "gay",
            "lesbian",
            "transgender",
            "gender dysphoria",
            "coming out",
            "come out",
            "abuse",
            "bullied",
            "racism",
            "erectile",
            "drinking too much",
            "loneliness",
            "my body",
            "lose weight",
            "doctor",
        ),
    ),
    (
        "context_dependent",
        (
            "should i",
            "should the",
            "should children",
            "is it okay",
            "is it ok",
            "is it wrong",
            "is it better",
            "is it fine",
            "is it rude",
            "is it ethical",
            "is it selfish",
            "what do you think",
            "your opinion",
            "political",
            "vote",
            "religion",
            "death penalty",
            "discipline",
            "relationship",
            "relationships",
            "married",
            "forgive",
            "better than",
            "good for society",
            "a good idea",
            "taxes",
            "making people",
        ),
    ),
)

_PATTERNS = [
    (cat, re.compile(r"\b(?:" + "|".join(re.escape(k) for k in kws) + r")\b", re.IGNORECASE))
    for cat, kws in RULES
]


def categorize(prompt: str, overrides: Mapping[str, str] | None = None) -> str:
    """The category of one prompt (``overrides`` maps exact prompt text to a category)."""
    if overrides and prompt in overrides:
        return overrides[prompt]
    for category, pattern in _PATTERNS:
        if pattern.search(prompt):
            return category
    return "benign_control"


def load_category_map(source: str | Path | Mapping[str, str]) -> dict[str, str]:
    """A prompt -> category mapping from a dict or a CSV with ``prompt,category`` columns."""
    if isinstance(source, Mapping):
        mapping = {str(k): str(v) for k, v in source.items()}
        where = "mapping"
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no category file at {path}")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"prompt", "category"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{path}: needs columns 'prompt' and 'category', got {reader.fieldnames}"
                )
            mapping = {}
            for line, row in enumerate(reader, start=2):
                if row["category"] not in CATEGORIES:
                    raise ValueError(
                        f"{path} line {line}, field 'category': {row['category']!r} is not one of {CATEGORIES}"
                    )
                mapping[row["prompt"]] = row["category"]
        return mapping
    bad = {k: v for k, v in mapping.items() if v not in CATEGORIES}
    if bad:
        raise ValueError(
            f"{where}: categories {sorted(set(bad.values()))} are not among {CATEGORIES}"
        )
    return mapping


def write_category_map(path: str | Path, mapping: Mapping[str, str]) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "category"])
        for prompt, category in mapping.items():
            w.writerow([prompt, category])
    return path


def agreement(labelled: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Share of ``(prompt, label)`` pairs the rules put in the labelled category, per category."""
    hits: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    for prompt, label in labelled:
        hits.setdefault(label, []).append(categorize(prompt) == label)
    out = {c: sum(v) / len(v) for c, v in hits.items() if v}
    every = [x for v in hits.values() for x in v]
    out["overall"] = sum(every) / len(every) if every else float("nan")
    return out
