"""Rows that begin alike run their common beginning once: the groups chosen, and scoring that
continues a shared prefix's KV cache equal to whole passes, on each engine and model class."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import ENGINES, assert_close_impl, no_hooks_left

import steerlens as sl
from steerlens.core.engines import hf
from steerlens.run.prefix import (
    CACHE_TOKENS,
    common_prefix,
    continued_batches,
    plan_tokens,
    prefix_groups,
    shared_plan,
    worth_sharing,
)
from steerlens.run.scoring import ids_logprobs


def _tokens(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(5, 250, (n,), generator=g)


def _rows(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Four rows after one 20-token history (one of them the history alone), two after
    another 18-token one, one alone; continuations of 0-5 tokens."""
    g = torch.Generator().manual_seed(seed)
    history, other = _tokens(g, 20), _tokens(g, 18)
    heads = [
        torch.cat([history, _tokens(g, 3)]),
        torch.cat([history, _tokens(g, 5)]),
        torch.cat([other, _tokens(g, 2)]),
        _tokens(g, 7),
        torch.cat([history, _tokens(g, 4)]),
        torch.cat([other, _tokens(g, 6)]),
        history.clone(),
    ]
    tails = [_tokens(g, n) for n in (4, 0, 3, 5, 2, 1, 3)]
    return heads, tails


def test_groups_share_what_their_rows_have_in_common():
    heads, _ = _rows()
    groups = {tuple(sorted(g.rows)): g.length for g in prefix_groups(heads)}
    # the history alone (row 6) caps its group one token short: its last position predicts
    assert groups == {(0, 1, 4, 6): 19, (2, 5): 18}
    assert prefix_groups(heads, min_shared=19) == [
        g for g in prefix_groups(heads) if g.length >= 19
    ]
    assert prefix_groups(heads[:1]) == [] and prefix_groups([]) == []
    assert common_prefix(heads[0], heads[1]) >= 20 and common_prefix(heads[0], heads[3]) == 0


@pytest.mark.parametrize("seed", range(6))
def test_groups_save_as_many_tokens_as_the_best_partition(seed):
    g = torch.Generator().manual_seed(seed)
    stems = [_tokens(g, int(n)) for n in torch.randint(10, 40, (3,), generator=g)]
    heads = []
    for _ in range(7):
        stem = stems[int(torch.randint(0, 3, (1,), generator=g))]
        cut = int(torch.randint(0, len(stem), (1,), generator=g))
        extra = _tokens(g, int(torch.randint(1, 6, (1,), generator=g)))
        heads.append(torch.cat([stem[: max(cut, 12)], extra]))
    got = prefix_groups(heads, min_shared=8)
    assert all(len(grp.rows) >= 2 and grp.length >= 8 for grp in got)
    for grp in got:  # every member has the prefix, and a token after it
        first = heads[grp.rows[0]][: grp.length]
        assert all(torch.equal(heads[i][: grp.length], first) for i in grp.rows)
        assert all(len(heads[i]) > grp.length for i in grp.rows)
    saved = sum((len(grp.rows) - 1) * grp.length for grp in got)
    order = sorted(range(len(heads)), key=lambda i: heads[i].tolist())

    def value(run: list[int]) -> int:  # a run of sorted rows kept as one group
        if len(run) < 2:
            return 0
        p = min(
            min(len(heads[i]) - 1 for i in run),
            *(common_prefix(heads[run[0]], heads[i]) for i in run[1:]),
        )
        return (len(run) - 1) * p if p >= 8 else 0

    best = 0
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        runs, run = [], [order[0]]
        for cut, i in zip(cuts, order[1:], strict=True):
            if cut:
                runs.append(run)
                run = []
            run.append(i)
        best = max(best, sum(value(r) for r in [*runs, run]))
    assert saved == best


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = hf.HFEngine.logits_after

    def spy(self, prefix_ids, prefix_mask, owner, *args):
        calls.append(len(owner))
        return real(self, prefix_ids, prefix_mask, owner, *args)

    monkeypatch.setattr(hf.HFEngine, "logits_after", spy)
    return calls


@pytest.mark.parametrize("engine", ENGINES)
def test_shared_prefixes_give_the_whole_passes_numbers(tiny, engine, monkeypatch):
    heads, tails = _rows()
    calls = _spy(monkeypatch)
    got = ids_logprobs(tiny, heads, tails, batch_size=3, engine=engine)
    if engine == "hf":  # the fast path continues each group's cache; the TL path runs whole
        assert sum(calls) == 6 and len(calls) >= 2  # six rows in groups, in batches of 3
    else:
        assert calls == []
    monkeypatch.setattr(hf.HFEngine, "can_share_prefix", lambda self: False)
    whole = ids_logprobs(tiny, heads, tails, batch_size=3, engine=engine)
    for a, b, t in zip(got, whole, tails, strict=True):
        assert a.shape == b.shape == t.shape
        assert_close_impl(a, b)
    for h, t, a in zip(heads, tails, got, strict=True):  # and one row at a time
        (single,) = ids_logprobs(tiny, [h], [t], engine=engine)
        assert_close_impl(a, single)
    assert no_hooks_left(tiny)


def test_an_open_steering_block_runs_whole_passes(tiny, rand_vec, monkeypatch):
    heads, tails = _rows()
    calls = _spy(monkeypatch)
    with sl.steering(tiny, rand_vec, alpha=[float(a) for a in range(len(heads))]):
        steered = ids_logprobs(tiny, heads, tails, batch_size=3, engine="hf")
    assert calls == []  # per-row values index the call's rows: nothing shared
    for i in (0, 4):  # row i under its own α, as a call of its own
        with sl.steering(tiny, rand_vec, alpha=float(i)):
            (single,) = ids_logprobs(tiny, [heads[i]], [tails[i]], engine="hf")
        assert_close_impl(steered[i], single)
    assert no_hooks_left(tiny)


def test_a_model_whose_cache_cannot_be_continued_runs_whole(tiny, monkeypatch):
    eng = sl.core.engines.resolve_engine(tiny, "hook_resid_post", "hf")
    heads, tails = _rows()
    monkeypatch.setattr(hf, "_SHARES", type(hf._SHARES)())
    real = hf._continued_logits

    def scaled(*args):  # a continuation that disagrees with the whole pass
        return 1.5 * real(*args)

    monkeypatch.setattr(hf, "_continued_logits", scaled)
    assert not eng.can_share_prefix()
    with pytest.raises(ValueError, match="cannot continue"):
        eng.logits_after(*[torch.zeros(1, 2, dtype=torch.long)] * 2, [0], *[None] * 3)
    calls = _spy(monkeypatch)
    ids_logprobs(tiny, heads, tails, engine="hf")
    assert calls == []
    monkeypatch.setattr(hf, "_SHARES", type(hf._SHARES)())

    def refuses(*args):
        raise TypeError("no cache here")

    monkeypatch.setattr(hf, "_continued_logits", refuses)
    assert not eng.can_share_prefix()  # a probe that raises: whole passes, no error
    monkeypatch.setattr(hf, "_continued_logits", real)
    monkeypatch.setattr(hf, "_SHARES", type(hf._SHARES)())
    assert eng.can_share_prefix()
    # a sliding window counts cache slots, which a shorter prefix's padding would shift
    monkeypatch.setattr(hf, "_SHARES", type(hf._SHARES)())
    monkeypatch.setattr(eng.twin.config, "sliding_window", 8, raising=False)
    assert not eng.can_share_prefix()


def test_which_attention_counts_as_windowed():
    from types import SimpleNamespace as Config

    assert hf._windowed(Config()) is None
    assert hf._windowed(Config(layer_types=["full_attention"] * 2)) is None
    assert hf._windowed(Config(sliding_window=4096, use_sliding_window=False)) is None
    assert "sliding" in hf._windowed(Config(layer_types=["sliding_attention", "full_attention"]))
    assert "4096" in hf._windowed(Config(sliding_window=4096))
    assert "chunked" in hf._windowed(Config(attention_chunk_size=8192))


def test_groups_may_leave_the_weakest_link_inside_a_group():
    # adjacent common prefixes 100, 30, 20, 30, 100 over rows A-F: {A,B}, {C,D}, {E,F} save
    # 100 + 20 + 100 tokens, more than any split at the weakest link alone
    g = torch.Generator().manual_seed(3)
    base = _tokens(g, 20)
    left = torch.cat([base, torch.tensor([10]), _tokens(g, 9)])  # 30 tokens
    right = torch.cat([base, torch.tensor([20]), _tokens(g, 9)])
    long_left = torch.cat([left, torch.tensor([5]), _tokens(g, 69)])  # 100 tokens
    long_right = torch.cat([right, torch.tensor([6]), _tokens(g, 69)])
    heads = [
        torch.cat([long_left, torch.tensor([1, 7])]),  # A
        torch.cat([long_left, torch.tensor([2, 7])]),  # B
        torch.cat([left, torch.tensor([6, 7, 7])]),  # C
        torch.cat([right, torch.tensor([5, 7, 7])]),  # D
        torch.cat([long_right, torch.tensor([1, 7])]),  # E
        torch.cat([long_right, torch.tensor([2, 7])]),  # F
    ]
    got = {tuple(sorted(x.rows)): x.length for x in prefix_groups(heads)}
    assert got == {(0, 1): 100, (2, 3): 20, (4, 5): 100}


@pytest.mark.parametrize("engine", ENGINES)
def test_rows_of_two_prefixes_in_one_batch(tiny, engine):
    # logits_after with two prefixes (right-padded) and their rows interleaved
    g = torch.Generator().manual_seed(4)
    prefixes = [_tokens(g, 7), _tokens(g, 3)]
    rows = [(1, _tokens(g, 4)), (0, _tokens(g, 2)), (1, _tokens(g, 5))]
    eng = sl.core.engines.resolve_engine(tiny, "hook_resid_post", engine)
    if not eng.can_share_prefix():
        assert engine == "tl"
        with pytest.raises(NotImplementedError):
            eng.logits_after(*[torch.zeros(1, 2, dtype=torch.long)] * 2, [0], *[None] * 3)
        return
    pre = sl.tokens.pad(tiny, prefixes, side="right")
    enc = sl.tokens.pad(tiny, [r for _, r in rows], side="right")
    spans = [range(len(r)) for _, r in rows]
    with torch.inference_mode():
        got = eng.logits_after(
            pre.input_ids,
            pre.attention_mask,
            [o for o, _ in rows],
            enc.input_ids,
            enc.attention_mask,
            spans,
        )
        for (o, r), lg in zip(rows, got, strict=True):
            whole = torch.cat([prefixes[o], r]).to(tiny.cfg.device)[None]
            p = len(prefixes[o])
            (ref,) = eng.logits_at(whole, torch.ones_like(whole), [range(p, p + len(r))])
            assert_close_impl(lg.log_softmax(-1), ref.log_softmax(-1))


def test_sharing_only_where_it_saves_tokens(tiny, monkeypatch):
    # 16 shared tokens before 203 of each row's own: under a tenth saved, so whole passes
    g = torch.Generator().manual_seed(5)
    stem = _tokens(g, 16)
    heads = [torch.cat([stem, _tokens(g, 200)]) for _ in range(3)]
    tails = [_tokens(g, 3) for _ in heads]
    groups = prefix_groups(heads)
    assert [len(x.rows) for x in groups] == [3]
    ids = [torch.cat([h, t]) for h, t in zip(heads, tails, strict=True)]
    assert not worth_sharing(tiny, ids, groups, 16, None)
    calls = _spy(monkeypatch)
    ids_logprobs(tiny, heads, tails, engine="hf")
    assert calls == []
    long_rows, _ = _rows()
    assert worth_sharing(tiny, long_rows, prefix_groups(long_rows), 3, 0)


def test_batches_hold_groups_within_the_budget():
    heads, tails = _rows()
    ids = [torch.cat([h, t]) for h, t in zip(heads, tails, strict=True)]
    groups = prefix_groups(heads)
    assert len(groups) == 2  # 4 rows after the 20-token history, 2 after the 18-token one
    for budget in (None, 60, 20, 1):
        batches = continued_batches(ids, groups, 3, budget)
        flat = [i for b in batches for _, i in b]
        assert sorted(flat) == sorted(i for x in groups for i in x.rows)
        assert flat == [i for x in groups for i in x.rows]  # group after group, in order
        for b in batches:
            kinds = {k for k, _ in b}
            assert len(b) <= 3 and all(i in groups[k].rows for k, i in b)
            p = max(groups[k].length for k in kinds)
            w = max(len(ids[i]) - groups[k].length for k, i in b)
            if budget is not None and len(b) > 1:
                assert len(b) * w <= budget and len(b) * (p + w) <= max(budget, CACHE_TOKENS)
                assert len(kinds) == 1 or len(kinds) * p <= budget
        if budget is None:  # rows only: the second group's first row joins the first's last
            assert [len(b) for b in batches] == [3, 3] and len({k for k, _ in batches[1]}) == 2
    assert len(continued_batches(ids, groups, 3, 1)) == 6  # one row each: nothing fits two


def test_a_long_prefix_bounds_a_batch_by_its_rows_cache(monkeypatch):
    # rows' own tokens (2-3 each) fit a budget of 16 many times over; their copies of a
    # 100-token prefix's cache fit CACHE_TOKENS (here 210) twice, and a budget above it once
    from steerlens.run import prefix

    monkeypatch.setattr(prefix, "CACHE_TOKENS", 210)
    g = torch.Generator().manual_seed(3)
    stem = _tokens(g, 100)
    ids = [torch.cat([stem, _tokens(g, 3)]) for _ in range(5)]
    groups = prefix_groups([x[:-1] for x in ids])
    ((length, rows),) = [(x.length, x.rows) for x in groups]
    assert length >= 100 and len(rows) == 5
    width = 103 - length  # each row's own tokens
    assert 2 * (length + width) <= 210 < 3 * (length + width)
    assert [len(b) for b in continued_batches(ids, groups, 8, 16)] == [2, 2, 1]
    assert [len(b) for b in continued_batches(ids, groups, 8, 4)] == [1] * 5  # own tokens
    big = 3 * (length + width)  # a budget above CACHE_TOKENS bounds it alone
    assert [len(b) for b in continued_batches(ids, groups, 8, big)] == [3, 2]


def test_one_shared_beginning_wins_where_groups_would_pad(tiny, monkeypatch):
    # a 20-token system prompt, then 4 prompts of 20 tokens, each before a short and a long
    # response: per-prompt groups save more prefix tokens but pad every short row to a long
    # one; one group at the system prompt batches rows by length, as whole passes do
    g = torch.Generator().manual_seed(7)
    system = _tokens(g, 20)
    heads, tails = [], []
    for _ in range(4):
        prompt = torch.cat([system, _tokens(g, 20)])
        for n in (2, 60):
            heads.append(prompt)
            tails.append(_tokens(g, n))
    ids = [torch.cat([h, t]) for h, t in zip(heads, tails, strict=True)]
    found = prefix_groups(heads)
    assert [len(x.rows) for x in found] == [2, 2, 2, 2]
    (one,) = shared_plan(tiny, heads, ids, 4, 1024)
    assert one.length == 20 and sorted(one.rows) == list(range(8))
    assert [len(ids[i]) for i in one.rows] == sorted((len(x) for x in ids), reverse=True)
    cost = plan_tokens(ids, [one], continued_batches(ids, [one], 4, 1024))
    per_prompt = plan_tokens(ids, found, continued_batches(ids, found, 4, 1024))
    assert cost < per_prompt
    calls = _spy(monkeypatch)
    got = ids_logprobs(tiny, heads, tails, batch_size=4, engine="hf")
    assert sum(calls) == 8  # every row continued the system prompt's cache
    for h, t, a in zip(heads, tails, got, strict=True):
        (single,) = ids_logprobs(tiny, [h], [t], engine="tl")
        assert_close_impl(a, single)


@pytest.mark.parametrize("layer", [0, 2])
def test_rows_resuming_one_run_equal_their_whole_passes(tiny, layer):
    """``HFEngine.logits_resumed``: a row after ``ids[:cut]`` that runs only its own columns
    (from ``layer`` on, with the whole run's residual entering it) gives the whole pass's
    logits there; a row whose own tokens differ from ``ids`` (an edited tail) too."""
    eng = sl.core.engines.resolve_engine(tiny, "hook_resid_post", "hf")
    g = torch.Generator().manual_seed(3)
    ids = _tokens(g, 12)
    cuts = [3, 7, 11, 12]
    tails = [ids[3:], ids[7:].flip(0), ids[11:], _tokens(g, 2)]
    wide = max(len(t) for t in tails)
    own = torch.zeros((len(tails), wide), dtype=torch.long)
    mask = torch.zeros_like(own)
    for r, t in enumerate(tails):
        own[r, : len(t)], mask[r, : len(t)] = t, 1
    positions = [list(range(len(t))) for t in tails]
    resid = None
    if layer:
        (pre,) = eng.capture(
            ids[None], torch.ones(1, len(ids), dtype=torch.long), [layer], "hook_resid_pre"
        )
        resid = torch.zeros(len(tails), wide, pre.shape[-1])
        for r, c in enumerate(cuts):
            if torch.equal(tails[r], ids[c:]):
                resid[r, : len(tails[r])] = pre[0, c:]
        keep = [r for r, c in enumerate(cuts) if torch.equal(tails[r], ids[c:])]
    else:
        keep = list(range(len(tails)))
    with torch.inference_mode(), eng.hooks([]):
        got = eng.logits_resumed(ids, cuts, own, mask, positions, layer=layer, resid=resid)
        for r in keep:
            whole = torch.cat([ids[: cuts[r]], tails[r]])
            (ref,) = eng.logits_at(
                whole[None],
                torch.ones(1, len(whole), dtype=torch.long),
                [list(range(cuts[r], len(whole)))],
            )
            assert_close_impl(got[r], ref)
    assert eng.can_resume(layer)
    assert no_hooks_left(tiny)
    with pytest.raises(ValueError, match="cut"):
        eng.logits_resumed(ids, [0, 1, 2, 3], own, mask, positions)
    with pytest.raises(ValueError, match="residual"):
        eng.logits_resumed(ids, cuts, own, mask, positions, layer=layer or 1, resid=None)
    tl = sl.core.engines.resolve_engine(tiny, "hook_resid_post", "tl")
    assert not tl.can_resume()
    with pytest.raises(NotImplementedError):
        tl.logits_resumed(ids, cuts, own, mask, positions)


def test_resuming_a_run_is_refused_under_an_open_steering_block(tiny, rand_vec):
    ids = torch.arange(5, 15)
    with sl.steering(tiny, rand_vec, alpha=1.0):
        eng = sl.core.engines.resolve_engine(tiny, "hook_resid_post", "hf")
        with pytest.raises(ValueError, match="steering"):
            eng.logits_resumed(ids, [4], ids[None, 4:], torch.ones(1, 6, dtype=torch.long), [[0]])
    assert no_hooks_left(tiny)
