"""SteerX causal effects: ablation estimators, item/token ablation, activation and attribution
patching — exact arithmetic on tiny models, batched == one at a time, both model classes."""

from __future__ import annotations

import pytest
import torch
from conftest import ENGINES, assert_close_impl, no_hooks_left

import steerlens as sl
from steerlens.run.scoring import ids_logprobs
from steerlens.steerx import (
    activation_patching,
    attribution_patching,
    batch_history_effects,
    history_effects,
    history_items,
    history_token_effects,
    item_effects,
    rank_agreement,
    shuffled_history,
)

HIST = [
    {"role": "user", "content": "Tell me about dogs."},
    {"role": "assistant", "content": "Dogs are loyal, damn good friends."},
    {"role": "user", "content": "And cats?"},
    {"role": "assistant", "content": "Cats are aloof."},
]
OTHER = [
    {"role": "user", "content": "Plan a trip."},
    {"role": "assistant", "content": "Certainly. Kindly consider Rome."},
]
KW = dict(prompt="What about birds?", response="Birds sing, damn it.", history=HIST)


@pytest.mark.parametrize("engine", ENGINES)
def test_history_effect_is_the_probability_difference_of_two_contexts(tiny, engine):
    eff = history_effects(tiny, engine=engine, **KW)
    with_h = sl.continuation_logprobs(
        tiny, [[*HIST, {"role": "user", "content": KW["prompt"]}]], [KW["response"]], engine="tl"
    )[0]
    without = sl.continuation_logprobs(tiny, [KW["prompt"]], [KW["response"]], engine="tl")[0]
    assert_close_impl(eff.logp_with, with_h)
    assert_close_impl(eff.logp_without, without)
    assert torch.equal(eff.effect, eff.logp_with.exp() - eff.logp_without.exp())
    assert torch.equal(eff.log_ratio, eff.logp_with - eff.logp_without)
    assert "".join(KW["response"][a:b] for a, b in eff.offsets) == KW["response"]
    frame = eff.to_frame()
    assert list(frame.columns) == [
        "token",
        "start",
        "end",
        "p_with",
        "p_without",
        "effect",
        "log_ratio",
    ]
    assert len(frame) == len(eff) == len(eff.tokens)


def test_batched_effects_equal_one_at_a_time_and_counterfactuals(tiny):
    queries = [
        (KW["prompt"], KW["response"], HIST, None),
        ("Hi?", "Hello there, friend.", HIST[:2], OTHER),  # placebo: another user's history
        ("Why?", "Because.", HIST, shuffled_history(HIST, seed=1)),
    ]
    batched = batch_history_effects(tiny, queries, batch_size=4)
    for q, b in zip(queries, batched, strict=True):
        (single,) = batch_history_effects(tiny, [q], batch_size=1)
        assert_close_impl(b.logp_with, single.logp_with)
        assert_close_impl(b.logp_without, single.logp_without)
    none = history_effects(tiny, **KW)
    empty = history_effects(tiny, counterfactual=[], **KW)
    assert torch.equal(none.logp_without, empty.logp_without)
    same = history_effects(tiny, counterfactual=HIST, **KW)
    # identical contexts, two rows of one batch: equal up to float noise
    assert_close_impl(same.logp_with, same.logp_without)
    assert batched[1].metadata["counterfactual_items"] == 1


def test_select_thresholds_top_k_and_spans(tiny):
    eff = history_effects(tiny, **KW)
    values = eff.effect.numpy()
    sel = eff.select(threshold=0.0)
    assert sel == sorted(i for i, v in enumerate(values) if v > 0)
    top = eff.select(threshold=-1.0, top_k=3)
    assert len(top) == 3 and set(top) == set(
        sorted(range(len(values)), key=lambda i: -values[i])[:3]
    )
    by_ratio = eff.select(threshold=0.0, measure="log_ratio")
    assert by_ratio == sorted(i for i, v in enumerate(eff.log_ratio.numpy()) if v > 0)
    assert eff.spans([0, 1, 2]) == [(0, eff.offsets[2][1])]
    with pytest.raises(ValueError, match="measure"):
        eff.select(measure="vibes")  # type: ignore[arg-type]


def test_item_ablation_rows_are_the_history_without_each_item(tiny):
    items = history_items(HIST)
    assert [len(it) for it in items] == [2, 2]
    res = item_effects(tiny, **KW)
    assert res.effect.shape == (2, len(res.target))
    for i in range(2):
        rest = [m for j, it in enumerate(items) if j != i for m in it]
        ref = history_effects(tiny, counterfactual=rest, **KW)
        assert_close_impl(res.effect[i], ref.effect)
    with pytest.raises(ValueError, match="non-empty history"):
        item_effects(tiny, prompt="x", response="y", history=[])


def test_ablations_reuse_the_callers_full_and_no_history_effects(tiny):
    base = history_effects(tiny, **KW)
    for fn, kw in ((item_effects, {}), (history_token_effects, {"max_tokens": 4})):
        own = fn(tiny, **kw, **KW)
        given = fn(tiny, target=base, **kw, **KW)
        assert given.target is base
        assert_close_impl(own.target.logp_with, base.logp_with)
        assert_close_impl(own.target.logp_without, base.logp_without)
        assert_close_impl(given.effect, own.effect)
        other = history_effects(tiny, **{**KW, "response": "Something else entirely."})
        with pytest.raises(ValueError, match="another response"):
            fn(tiny, target=other, **kw, **KW)
        with pytest.raises(ValueError, match="another prompt"):
            fn(tiny, target=base, **kw, **{**KW, "prompt": "What about fish?"})


def test_token_ablation_remove_and_mean_modes(tiny):
    res = history_token_effects(tiny, mode="remove", max_tokens=6, batch_size=4, **KW)
    assert len(res.positions) == 6 and res.logp_ablated.shape == (6, len(res.target))
    ctx = sl.encode_prompts(tiny, [[*HIST, {"role": "user", "content": KW["prompt"]}]])[0]
    assert "".join(res.history_tokens) in "".join(m["content"] for m in HIST)
    p = res.positions[2]
    (manual,) = ids_logprobs(tiny, [torch.cat([ctx[:p], ctx[p + 1 :]])], [res.target.ids])
    assert_close_impl(res.logp_ablated[2], manual)
    mean = history_token_effects(tiny, mode="mean", max_tokens=6, batch_size=4, **KW)
    one = history_token_effects(tiny, mode="mean", max_tokens=6, batch_size=1, **KW)
    assert_close_impl(mean.logp_ablated, one.logp_ablated)  # per-row position follows its row
    assert not torch.allclose(mean.logp_ablated, res.logp_ablated, atol=1e-4)
    assert mean.total().shape == (6,)
    assert no_hooks_left(tiny)
    with pytest.raises(ValueError, match="mode"):
        history_token_effects(tiny, mode="zero", **KW)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_activation_patching_restores_exactly_at_the_last_layer(tiny, engine):
    last = tiny.cfg.n_layers - 1
    full = activation_patching(tiny, positions="all", engine=engine, **KW)
    assert full.restored.shape == (tiny.cfg.n_layers, 1, len(full.tokens))
    # the last block's output at every aligned position is all the logits depend on
    assert_close_impl(full.restored[last, 0], full.gap)
    assert full.by_layer()[last] == pytest.approx(1.0, abs=1e-3)
    grid = activation_patching(tiny, layers=[0, last], batch_size=16, engine=engine, **KW)
    single = activation_patching(tiny, layers=[0, last], batch_size=1, engine="tl", **KW)
    assert grid.restored.shape == (2, len(grid.tokens), len(grid.tokens))
    assert_close_impl(grid.restored, single.restored)
    # a patch at the last layer only changes the token predicted at that position
    j = 2
    row = grid.restored[1, j]
    assert_close_impl(row[j], grid.gap[j])
    others = torch.cat([row[:j], row[j + 1 :]])  # patched batch vs single corrupt run
    assert others.abs().max() <= 1e-3 * float(grid.logp_corrupt.abs().max())
    same = activation_patching(tiny, counterfactual=HIST, layers=[0], engine=engine, **KW)
    assert same.restored.abs().max() <= 1e-3 * float(same.logp_corrupt.abs().max())
    assert no_hooks_left(tiny)
    with pytest.raises(ValueError, match="outside"):
        activation_patching(tiny, positions=[99], **KW)


def _midway_starts(monkeypatch, cuts: list[int] | None = None) -> list[int]:
    """The layers the fast path's passes start at above block 0 (``HFEngine.logits_from``
    and ``logits_resumed`` calls); ``cuts`` collects the resumed rows' cuts."""
    from steerlens.core.engines import hf

    starts: list[int] = []
    real_from, real_resumed = hf.HFEngine.logits_from, hf.HFEngine.logits_resumed

    def spy_from(self, resid, mask, layer, positions):
        starts.append(layer)
        return real_from(self, resid, mask, layer, positions)

    def spy_resumed(self, ids, row_cuts, input_ids, mask, positions, layer=0, resid=None):
        if layer:
            starts.append(layer)
        if cuts is not None:
            cuts.extend(row_cuts)
        return real_resumed(self, ids, row_cuts, input_ids, mask, positions, layer, resid)

    monkeypatch.setattr(hf.HFEngine, "logits_from", spy_from)
    monkeypatch.setattr(hf.HFEngine, "logits_resumed", spy_resumed)
    return starts


@pytest.mark.parametrize(
    ("engine", "resume"),
    [("hf", True), ("hf", False), ("tl", True)],  # the TransformerLens path never resumes
    ids=["hf-resumed", "hf-whole-width", "tl"],
)
def test_patched_rows_start_at_their_layer_on_the_fast_path(tiny, engine, resume, monkeypatch):
    from steerlens.core.engines import hf

    if not resume:  # rows as wide as the corrupt run, started midway only
        monkeypatch.setattr(hf.HFEngine, "can_resume", lambda self, layer=0: False)
    cuts: list[int] = []
    starts = _midway_starts(monkeypatch, cuts)
    runs: list[int] = []
    whole_run = hf.whole_run
    monkeypatch.setattr(hf, "whole_run", lambda *a, **k: runs.append(1) or whole_run(*a, **k))
    layers = [0, 2, tiny.cfg.n_layers - 1]
    got = activation_patching(tiny, layers=layers, engine=engine, batch_size=1, **KW)
    # the corrupt run's cache is built once for all the resumed batches
    assert len(runs) == (1 if engine == "hf" and resume else 0)
    # block 0 has nothing below it: from the embeddings; the others from the corrupt run's
    # residual there
    assert sorted(set(starts)) == ([2, tiny.cfg.n_layers - 1] if engine == "hf" else [])
    n_t = len(got.tokens)
    if engine == "hf" and resume:  # each row runs from its patched column on
        corrupt = sl.encode_prompts(tiny, [KW["prompt"]])[0]
        first = len(corrupt) - 1  # the column predicting the first target token
        assert sorted(cuts) == sorted(first + p for _ in layers for p in range(n_t))
    else:
        assert cuts == []
    mixed = activation_patching(tiny, layers=layers, engine=engine, batch_size=5, **KW)
    monkeypatch.setattr(hf.HFEngine, "can_start_at", lambda self, layer: False)
    monkeypatch.setattr(hf.HFEngine, "can_resume", lambda self, layer=0: False)
    whole = activation_patching(tiny, layers=layers, engine=engine, **KW)
    single = activation_patching(tiny, layers=layers, engine="tl", batch_size=1, **KW)
    assert_close_impl(got.restored, whole.restored)
    assert_close_impl(mixed.restored, whole.restored)  # batches of several rows
    assert_close_impl(got.restored, single.restored)
    # every aligned position of a middle layer at once (one row a layer, cut at the first)
    every = activation_patching(tiny, layers=[2], positions="all", engine="tl", **KW)
    monkeypatch.undo()
    if not resume:
        monkeypatch.setattr(hf.HFEngine, "can_resume", lambda self, layer=0: False)
    fast = activation_patching(tiny, layers=[2], positions="all", engine=engine, **KW)
    assert_close_impl(fast.restored, every.restored)
    # a patch at position p leaves the targets before it as they were: exactly, when resumed
    before = got.restored[:, torch.ones(n_t, n_t).tril(-1).bool()]  # [l, p, t] with t < p
    if engine == "hf" and resume:
        assert float(before.abs().max()) == 0.0
    assert float(got.restored.abs().max()) > 0
    assert no_hooks_left(tiny)


def test_patching_under_a_steering_block_runs_whole_passes(tiny, rand_vec, monkeypatch):

    starts = _midway_starts(monkeypatch)
    layers = [2, tiny.cfg.n_layers - 1]
    with sl.steering(tiny, rand_vec, alpha=2.0):
        fast = activation_patching(tiny, layers=layers, engine="hf", batch_size=1, **KW)
        hooked = activation_patching(tiny, layers=layers, engine="tl", **KW)
    # the block's hooks act once on every row: no row starts from a steered residual
    assert starts == []
    assert_close_impl(fast.restored, hooked.restored)
    assert_close_impl(fast.logp_corrupt, hooked.logp_corrupt)
    plain = activation_patching(tiny, layers=layers, engine="hf", batch_size=1, **KW)
    assert sorted(set(starts)) == layers  # unsteered again: midway starts still on
    assert float((plain.logp_corrupt - fast.logp_corrupt).abs().max()) > 1e-3  # it steered
    assert no_hooks_left(tiny)


def test_attribution_patching_agrees_with_exact_patching(tiny):
    exact = activation_patching(tiny, **KW)
    with torch.no_grad():  # turns gradients on for itself
        grad = attribution_patching(tiny, **KW)
    assert grad.method == "attribution-patching"
    assert grad.layer_position().shape == exact.layer_position().shape
    assert rank_agreement(exact.layer_position(), grad.layer_position())["spearman"] > 0
    ig = attribution_patching(tiny, steps=32, **KW)
    # integrated gradients are complete: per layer, the estimates sum to patching every
    # aligned position of that layer at once
    layer_all = activation_patching(tiny, positions="all", **KW).restored.sum(-1)[:, 0]
    torch.testing.assert_close(ig.restored[:, :, 0].sum(-1), layer_all, rtol=0.1, atol=0.2)
    agree = rank_agreement(exact.layer_position(), ig.layer_position())
    assert agree["spearman"] > 0.5
    assert no_hooks_left(tiny)
    assert all(p.requires_grad for p in tiny.parameters())  # weights handed back


def test_integrated_gradients_differentiate_from_the_moved_layer_as_through_the_whole_net(tiny):
    """Each step's gradient at the moved layer, with the graph starting there, is the one a
    pass differentiated from the embeddings gives (written out here, one pass per step)."""
    from steerlens.steerx import patching

    steps, layers = 3, [1, 3]
    clean, corrupt, ids, _ = patching._runs(tiny, KW["prompt"], KW["response"], HIST, None)
    n_t = int(ids.numel())
    c_pos, k_pos = patching._aligned(clean, n_t), patching._aligned(corrupt, n_t)
    src, _ = patching._one_run(sl.core.engines.TLEngine(tiny), clean, layers, ids)
    expected = torch.zeros(len(layers), n_t)
    for i, layer in enumerate(layers):
        total = torch.zeros(n_t, tiny.cfg.d_model)
        for k in range(1, steps + 1):
            seen: dict[str, torch.Tensor] = {}

            def leaf(x, *, hook):
                return x.detach().requires_grad_(True)

            def move(x, *, hook, a=k / steps, layer=layer, seen=seen):
                seen["before"] = x[0, k_pos].detach().float()
                x = x.clone()
                x[0, k_pos] = x[0, k_pos] + a * (src[layer][c_pos].to(x.dtype) - x[0, k_pos])
                x.retain_grad()
                seen["x"] = x
                return x

            with (
                torch.enable_grad(),
                tiny.hooks(fwd_hooks=[("hook_embed", leaf), (sl.resid_post(layer), move)]),
            ):
                logits = tiny(corrupt[None])
                patching._target_logp(logits[0], int(corrupt.numel()), ids).sum().backward()
            total += seen["x"].grad[0, k_pos].float()
        diff = src[layer][c_pos].float() - seen["before"]
        expected[i] = ((total / steps) * diff).sum(-1)
    got = attribution_patching(tiny, steps=steps, layers=layers, **KW)
    assert_close_impl(got.restored[:, :, 0], expected)
    assert float(expected.abs().max()) > 0
    assert no_hooks_left(tiny)
    assert all(p.requires_grad for p in tiny.parameters())


def test_integrated_gradient_steps_batched_as_rows_equal_one_pass_each(tiny, monkeypatch):
    from steerlens.steerx import patching

    batched = attribution_patching(tiny, steps=5, **KW)  # rows of 5 (STEP_ROWS 8): one pass
    monkeypatch.setattr(patching, "STEP_ROWS", 2)  # 2 + 2 + 1
    chunked = attribution_patching(tiny, steps=5, **KW)
    monkeypatch.setattr(patching, "STEP_ROWS", 1)  # a pass per step
    single = attribution_patching(tiny, steps=5, **KW)
    assert single.method == batched.method == "integrated-gradients-5"
    assert_close_impl(batched.restored, single.restored)
    assert_close_impl(chunked.restored, single.restored)
    assert float(single.restored.abs().max()) > 0
    assert no_hooks_left(tiny)


def test_rank_agreement():
    a = torch.tensor([3.0, 1.0, 2.0, 0.5])
    assert rank_agreement(a, a) == {"spearman": pytest.approx(1.0), "top10_overlap": 1.0}
    assert rank_agreement(a, -a)["spearman"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shapes"):
        rank_agreement(a, a[:2])
