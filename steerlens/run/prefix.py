"""Rows that begin alike: their common beginning runs once.

A user's history before each of their prompts, one prompt scored under the continuations of
every steering cell, the chat template before every prompt: scoring calls repeat long
prefixes. ``prefix_groups`` finds rows that share one (runs of rows sorted by their tokens,
chosen to save the most tokens), ``shared_plan`` costs those groups against one group at the
beginning every row shares and keeps the cheaper where it beats whole passes, and
``map_continued`` runs each batch's distinct prefixes once and its rows (of one group or
several) from their prefix's KV cache on (``Engine.logits_after``, ``Engine.capture_after``),
without hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from jaxtyping import Int
from torch import Tensor

from steerlens.core._progress import progress
from steerlens.core.batching import Batch, padded_tokens, token_budget
from steerlens.core.engines import Engine
from steerlens.core.models import HookedModel
from steerlens.core.tokens import Encoded, pad
from steerlens.run.passes import forward_batches

__all__ = [
    "CACHE_TOKENS",
    "MAX_GROUP",
    "MIN_SHARED",
    "SHARED_GAIN",
    "Continued",
    "PrefixGroup",
    "common_prefix",
    "continued_batches",
    "map_continued",
    "plan_tokens",
    "prefix_groups",
    "shared_plan",
    "split_rows",
    "worth_sharing",
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


SHARED_GAIN = 0.9
"""Prefixes are shared only where that computes at most this share of the tokens whole passes
would (``worth_sharing``)."""

CACHE_TOKENS = 8192
"""The most rows x (prefix + own tokens) a continued batch may hold where that exceeds its
token budget (each row holds a copy of its prefix's KV cache): a budget chosen for the
speed of small matrix multiplies (a CPU's) would otherwise rerun a long prefix for every
row or two (a user's history before each of their prompts); a budget chosen for memory (a
GPU's, above this) bounds it as a whole pass over the same rows would."""

MAX_GROUP = 128
"""The most rows one group may hold (a larger run of rows sharing a prefix forms several
groups: a batch holds fewer rows than this anyway, and the search stays linear)."""


def prefix_groups(
    heads: Sequence[Int[Tensor, " pos"]], min_shared: int = MIN_SHARED
) -> list[PrefixGroup]:
    """Groups of at least two rows of ``heads`` sharing at least ``min_shared`` leading tokens,
    chosen to save the most tokens (a group of ``n`` rows and prefix ``p`` saves
    ``(n - 1) x p``) among groups of neighbours in token order of at most ``MAX_GROUP`` rows;
    rows in no group are left out. A group's prefix stops at least one token short of every
    member's head (a head's last position predicts what follows it).

    Sorted by their tokens, rows that share most are neighbours, and a run of neighbours
    shares the least of its adjacent common prefixes: the best set of runs is found by
    dynamic programming over the sorted rows (best of the first ``j`` rows: row ``j - 1`` in no
    group, or ending a run that starts at row ``i``)."""
    order = sorted(range(len(heads)), key=lambda i: heads[i].tolist())
    n = len(order)
    own = [int(heads[i].numel()) - 1 for i in order]
    link = [  # shared by sorted rows k and k + 1, capped one short of both heads
        min(own[k], own[k + 1], common_prefix(heads[order[k]], heads[order[k + 1]]))
        for k in range(n - 1)
    ]
    best = [0] * (n + 1)  # tokens saved by the first j sorted rows
    start: list[int | None] = [None] * (n + 1)  # where the run ending at row j - 1 starts
    for j in range(2, n + 1):
        best[j], shared = best[j - 1], None
        for i in range(j - 2, max(j - MAX_GROUP, 0) - 1, -1):  # the run i .. j - 1
            shared = link[i] if shared is None else min(shared, link[i])
            if shared < min_shared:
                break
            if best[i] + (j - 1 - i) * shared > best[j]:
                best[j], start[j] = best[i] + (j - 1 - i) * shared, i
    groups: list[PrefixGroup] = []
    j = n
    while j > 1:
        first = start[j]
        if first is None:
            j -= 1
            continue
        groups.append(PrefixGroup(min(link[first : j - 1]), [order[k] for k in range(first, j)]))
        j = first
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
    ``split_rows`` order, with no hook open (the prefix pass and the rows' pass are two
    batches of different rows). Batches as ``continued_batches`` makes them."""
    batches = continued_batches(ids, groups, batch_size, _budget(model, max_tokens))
    prefixes = [ids[g.rows[0]][: g.length] for g in groups]
    out: list[T] = []
    for members in progress(
        batches, total=len(batches), description=description, enabled=progress_bar
    ):

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
            batch_size=len(members),  # one batch: its rows were chosen here
            max_tokens=None,
            sort=False,
        )
    return out


def _budget(model: HookedModel, max_tokens: int | None) -> int | None:
    """A call's token budget: 0 is the device's ``token_budget``."""
    return token_budget(model) if max_tokens == 0 else max_tokens


def continued_batches(
    ids: Sequence[Tensor], groups: Sequence[PrefixGroup], batch_size: int, budget: int | None
) -> list[list[tuple[int, int]]]:
    """The batches of ``map_continued``, as (group, row) pairs, filled group after group: at
    most ``batch_size`` rows and, with a ``budget``, the prefixes' pass (distinct prefixes x
    the longest, right-padded) and rows x the widest row after its prefix (the tokens the
    continuing pass computes) each within it, and rows x (longest prefix + widest row)
    within the larger of the budget and ``CACHE_TOKENS`` (each row holds a copy of its
    prefix's KV cache). A
    group's prefix runs once a batch it has rows in; a prefix longer than the budget runs
    alone."""
    batches: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    kinds: set[int] = set()
    width = prefix = 0
    for k, g in enumerate(groups):
        for i in g.rows:
            w = max(width, int(ids[i].numel()) - g.length)
            p = max(prefix, g.length)
            n, m = len(cur) + 1, len(kinds | {k})
            full = budget is not None and (
                (m > 1 and m * p > budget)
                or n * w > budget
                or n * (p + w) > max(budget, CACHE_TOKENS)
            )
            if cur and (len(cur) >= batch_size or full):
                batches.append(cur)
                cur, kinds = [], set()
                w, p = int(ids[i].numel()) - g.length, g.length
            cur.append((k, i))
            kinds.add(k)
            width, prefix = w, p
    if cur:
        batches.append(cur)
    return batches


def plan_tokens(
    ids: Sequence[Tensor], groups: Sequence[PrefixGroup], batches: Sequence[list[tuple[int, int]]]
) -> int:
    """Tokens, padding included, that ``map_continued`` computes for ``batches``: per batch,
    its distinct prefixes (right-padded) and its rows after their prefixes (padded)."""
    total = 0
    for batch in batches:
        kinds = {k for k, _ in batch}
        total += len(kinds) * max(groups[k].length for k in kinds)
        total += len(batch) * max(int(ids[i].numel()) - groups[k].length for k, i in batch)
    return total


def shared_plan(
    model: HookedModel,
    heads: Sequence[Int[Tensor, " pos"]],
    ids: Sequence[Int[Tensor, " pos"]],
    batch_size: int,
    max_tokens: int | None,
) -> list[PrefixGroup]:
    """The groups ``map_continued`` runs ``ids`` in (each row's prefix stops before the last
    token of its ``heads`` entry), or none where whole passes compute fewer tokens
    (``worth_sharing``). Two plans are costed, padding included: the groups ``prefix_groups``
    finds, and one group of every row at the beginning they all share (a chat template's
    system prompt) whose batches sort by length as whole passes do, the better where rows'
    lengths vary more within groups than a group's prefix saves. Longest prefixes first,
    each group's longest rows first."""
    if len(heads) < 2:
        return []
    budget = _budget(model, max_tokens)
    found = prefix_groups(heads)
    common = min(
        min(int(h.numel()) - 1 for h in heads), *(common_prefix(heads[0], h) for h in heads)
    )
    plans = [found] + (
        [[PrefixGroup(common, list(range(len(heads))))]] if common >= MIN_SHARED else []
    )
    best: list[PrefixGroup] = []
    cost: int | None = None
    for plan in plans:
        groups = [
            PrefixGroup(g.length, sorted(g.rows, key=lambda i: -int(ids[i].numel())))
            for g in sorted(plan, key=lambda g: -g.length)
        ]
        if not groups:
            continue
        c = _plan_cost(ids, groups, batch_size, budget)
        if cost is None or c < cost:
            best, cost = groups, c
    return best if best and worth_sharing(model, ids, best, batch_size, max_tokens) else []


def _plan_cost(
    ids: Sequence[Tensor], groups: Sequence[PrefixGroup], batch_size: int, budget: int | None
) -> int:
    """Tokens, padding included, of running ``ids`` with ``groups`` shared (the rest whole)."""
    _, rest = split_rows(len(ids), groups)
    whole = padded_tokens([int(ids[i].numel()) for i in rest], batch_size, budget)
    return whole + plan_tokens(ids, groups, continued_batches(ids, groups, batch_size, budget))


def worth_sharing(
    model: HookedModel,
    ids: Sequence[Tensor],
    groups: Sequence[PrefixGroup],
    batch_size: int,
    max_tokens: int | None,
) -> bool:
    """Whether the grouped plan (the ungrouped rows in whole passes, the groups in
    ``continued_batches``) computes at most ``SHARED_GAIN`` of the tokens that whole passes over
    every row would, padding included: a device whose budget packs many rows a batch can lose
    more to the groups' smaller batches than the shared prefixes save."""
    budget = _budget(model, max_tokens)
    whole = padded_tokens([int(x.numel()) for x in ids], batch_size, budget)
    return _plan_cost(ids, groups, batch_size, budget) <= SHARED_GAIN * whole
