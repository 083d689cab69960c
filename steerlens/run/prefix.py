"""Rows that begin alike: their common beginning runs once.

A user's history before each of their prompts, one prompt scored under the continuations of
every steering cell, the chat template before every prompt: scoring calls repeat long
prefixes. ``prefix_groups`` finds rows that share one (sorted by their tokens, adjacent rows
merged while the tokens saved grow) and ``Engine.logits_after`` runs each group's prefix once
and its rows from that prefix's KV cache on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from jaxtyping import Int
from torch import Tensor

from steerlens.core._progress import progress
from steerlens.core.batching import Batch, token_budget
from steerlens.core.engines import Engine
from steerlens.core.models import HookedModel
from steerlens.core.tokens import Encoded, pad
from steerlens.run.passes import forward_batches

__all__ = [
    "MIN_SHARED",
    "Continued",
    "PrefixGroup",
    "common_prefix",
    "map_continued",
    "prefix_groups",
    "split_rows",
]

T = TypeVar("T")

MIN_SHARED = 16
"""The fewest tokens a group's prefix must have to run apart from its rows (a shorter one
saves less than the extra pass costs)."""


@dataclass(frozen=True)
class PrefixGroup:
    """Rows (input indices) whose first ``length`` tokens are the same."""

    length: int
    rows: list[int]


def common_prefix(a: Int[Tensor, " pos"], b: Int[Tensor, " pos"]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    m = min(int(a.numel()), int(b.numel()))
    same = a[:m] == b[:m]
    return m if bool(same.all()) else int((~same).nonzero()[0])


def prefix_groups(
    heads: Sequence[Int[Tensor, " pos"]], min_shared: int = MIN_SHARED
) -> list[PrefixGroup]:
    """Groups of at least two rows of ``heads`` sharing at least ``min_shared`` leading tokens,
    chosen to save the most tokens (a group of ``n`` rows and prefix ``p`` saves
    ``(n - 1) x p``); rows in no group are left out. A group's prefix stops at least one token
    short of every member's head (a head's last position predicts what follows it).

    Sorted by their tokens, rows that share most are neighbours, and a group is a run of
    neighbours whose prefix is the least common prefix of adjacent rows in it: the best runs
    come from the tree of those adjacent prefixes (the smallest at the root), keeping at each
    node the whole run or the best of its two sides, in one pass."""
    order = sorted(range(len(heads)), key=lambda i: heads[i].tolist())
    n = len(order)
    if n < 2:
        return []
    own = [int(heads[i].numel()) - 1 for i in order]
    link = [  # shared by sorted rows k and k + 1, capped one short of both heads
        min(own[k], own[k + 1], common_prefix(heads[order[k]], heads[order[k + 1]]))
        for k in range(n - 1)
    ]
    # Cartesian tree of ``link`` (minimum at the root): node k covers sorted rows lo..hi
    left, right = [-1] * (n - 1), [-1] * (n - 1)
    stack: list[int] = []
    for k in range(n - 1):
        last = -1
        while stack and link[stack[-1]] > link[k]:
            last = stack.pop()
        left[k] = last
        if stack:
            right[stack[-1]] = k
        stack.append(k)
    root = stack[0]
    best = [0] * (n - 1)
    whole = [False] * (n - 1)
    span = [(0, 0)] * (n - 1)
    post: list[int] = []
    todo = [root]
    while todo:  # children before parents
        k = todo.pop()
        post.append(k)
        todo += [c for c in (left[k], right[k]) if c >= 0]
    for k in reversed(post):
        lo = span[left[k]][0] if left[k] >= 0 else k
        hi = span[right[k]][1] if right[k] >= 0 else k + 1
        span[k] = (lo, hi)
        sides = sum(best[c] for c in (left[k], right[k]) if c >= 0)
        saved = (hi - lo) * link[k] if link[k] >= min_shared else 0
        whole[k] = saved > sides
        best[k] = max(saved, sides)
    groups: list[PrefixGroup] = []
    todo = [root]
    while todo:
        k = todo.pop()
        if whole[k]:
            lo, hi = span[k]
            groups.append(PrefixGroup(link[k], [order[j] for j in range(lo, hi + 1)]))
        else:
            todo += [c for c in (right[k], left[k]) if c >= 0]
    return sorted(groups, key=lambda g: min(g.rows))


def split_rows(n: int, groups: Sequence[PrefixGroup]) -> tuple[list[int], list[int]]:
    """The rows in a group, group by group (in each, as ``PrefixGroup.rows`` lists them), and
    the rows of ``range(n)`` in none."""
    grouped = [i for g in groups for i in g.rows]
    taken = set(grouped)
    return grouped, [i for i in range(n) if i not in taken]


@dataclass(frozen=True)
class Continued:
    """One batch of grouped rows: their distinct prefixes (right-padded), per row the prefix
    it continues (``owner``: a row of ``prefix``), its input index, where its own tokens start
    in the whole row (its prefix's length), and the batch of its tokens after the prefix."""

    prefix: Encoded
    owner: list[int]
    rows: list[int]
    starts: list[int]
    batch: Batch


def map_continued(
    model: HookedModel,
    eng: Engine,
    ids: Sequence[Int[Tensor, " pos"]],
    groups: Sequence[PrefixGroup],
    fn: Callable[[Engine, Continued], Sequence[T]],
    *,
    batch_size: int,
    max_tokens: int | None = 0,
    progress_bar: bool = False,
    description: str = "run",
) -> list[T]:
    """``fn(eng, continued)`` on batches of the grouped rows of ``ids``, per-row results in
    ``split_rows`` order. A batch holds whole groups where they fit (``batch_size`` rows,
    and each group's prefix plus its rows' own tokens within the token budget: 0, the
    device's ``token_budget``; None: rows only), so each prefix runs once; a group larger than
    a batch runs its prefix once in each of its batches."""
    prefixes = [ids[g.rows[0]][: g.length] for g in groups]
    budget = token_budget(model) if max_tokens == 0 else max_tokens
    calls: list[list[int]] = [[]]
    rows = tokens = 0
    for k, g in enumerate(groups):
        size = g.length + sum(int(ids[i].numel()) - g.length for i in g.rows)
        full = budget is not None and tokens + size > budget
        if calls[-1] and (rows + len(g.rows) > batch_size or full):
            calls.append([])
            rows = tokens = 0
        calls[-1].append(k)
        rows, tokens = rows + len(g.rows), tokens + size
    out: list[T] = []
    for call in progress(calls, total=len(calls), description=description, enabled=progress_bar):
        members = [(k, i) for k in call for i in groups[k].rows]

        def run(eng: Engine, batch: Batch, members: list[tuple[int, int]] = members) -> Sequence[T]:
            mine = [members[r] for r in batch.rows]
            distinct = list(dict.fromkeys(k for k, _ in mine))
            continued = Continued(
                pad(model, [prefixes[k] for k in distinct], side="right"),
                [distinct.index(k) for k, _ in mine],
                [i for _, i in mine],
                [groups[k].length for k, _ in mine],
                batch,
            )
            return fn(eng, continued)

        out += forward_batches(
            model,
            [ids[i][groups[k].length :] for k, i in members],
            run,
            engine=eng,
            batch_size=batch_size,
            max_tokens=max_tokens,
            sort=False,  # a group's rows side by side: its prefix runs once a batch
        )
    return out
