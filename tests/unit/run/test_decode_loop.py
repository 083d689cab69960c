"""The decoding loop shared by every engine: rows that stop are EOS-filled, and greedy
decoding does not ask the device after each token whether every row has finished."""

from __future__ import annotations

import pytest
import torch

from steerlens.run import generation

STOPS = [2, 5, 3]  # row r emits token 1 until step STOPS[r], then EOS (0)


def _opts(new: int, sample: bool = False) -> generation._Decode:
    return generation._Decode(
        max_new_tokens=new,
        do_sample=sample,
        temperature=1e-4,  # sampling as sharp as greedy: the same tokens
        top_k=None,
        top_p=None,
        eos=[0],
        want_logits=True,
        generator=torch.Generator().manual_seed(0),
        seed=0,
    )


def _fake_step():
    calls = []

    def step(nxt):
        i = len(calls)
        calls.append(i)
        logits = torch.full((len(STOPS), 5), -10.0)
        for r, stop in enumerate(STOPS):
            logits[r, 0 if i >= stop else 1] = 10.0
        return logits

    return step, calls


@pytest.fixture
def syncs(monkeypatch):
    """How many times a tensor is read as a Python bool (a host sync on a GPU)."""
    count = []
    real = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: count.append(1) or real(t))
    return count


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("new", [4, 6, 40])
def test_rows_stop_at_eos_and_the_steps_are_cut_where_all_finished(new, sample, syncs):
    step, calls = _fake_step()
    tokens, logits = generation._decode(step, len(STOPS), _opts(new, sample))
    n = min(new, max(STOPS) + 1)  # the first step where every row had emitted EOS, or the end
    want = torch.tensor([[1 if i < stop else 0 for i in range(n)] for stop in STOPS])
    assert torch.equal(tokens, want)
    assert logits is not None and logits.shape[:2] == (len(STOPS), n)
    if sample:  # read every step: no step past the last (the generator draws nothing extra)
        assert len(calls) == n and len(syncs) == n
    else:  # read every SYNC_EVERY steps, and once at the end
        assert len(syncs) <= new // generation.SYNC_EVERY + 2
        assert len(calls) <= max(n, min(new, generation.SYNC_EVERY))
