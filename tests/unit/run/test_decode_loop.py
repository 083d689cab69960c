"""The decoding loop shared by every engine: rows that stop are EOS-filled, and on a GPU
greedy decoding does not ask the device after each token whether every row has finished."""

from __future__ import annotations

import pytest
import torch

from steerlens.run import generation

VOCAB = 64


def _opts(new: int, sample: bool = False, eos: tuple[int, ...] = (0,)) -> generation._Decode:
    return generation._Decode(
        max_new_tokens=new,
        do_sample=sample,
        temperature=1e-4,  # sampling as sharp as greedy: the same tokens
        top_k=None,
        top_p=None,
        eos=list(eos),
        want_logits=True,
        generator=torch.Generator().manual_seed(0),
        seed=0,
    )


def _fake_step(stops):
    """Row r emits token 1 + step until step ``stops[r]``, then EOS (0); the logits carry the
    step index in column VOCAB - 1, so each kept logit row is known by its step."""
    calls = []

    def step(nxt):
        i = len(calls)
        calls.append(i)
        logits = torch.full((len(stops), VOCAB), -10.0)
        for r, stop in enumerate(stops):
            logits[r, 0 if i >= stop else 1 + i] = 10.0
        logits[:, VOCAB - 1] = float(i) - 100.0  # never picked
        return logits

    return step, calls


@pytest.fixture
def syncs(monkeypatch):
    """How many times a tensor is read as a Python bool (a host sync on a GPU)."""
    count = []
    real = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: count.append(1) or real(t))
    return count


@pytest.mark.parametrize("every", [1, 8], ids=["each-step", "every-8"])
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize(
    ("stops", "new"),
    [([2, 5, 3], 4), ([2, 5, 3], 6), ([2, 5, 3], 40), ([7, 7, 7], 40), ([99, 1, 2], 12)],
    ids=["cut-by-budget", "budget-at-finish", "early-finish", "finish-at-step-8", "no-finish"],
)
def test_rows_stop_at_eos_and_the_steps_are_cut_where_all_finished(
    stops, new, sample, every, syncs
):
    step, calls = _fake_step(stops)
    tokens, logits = generation._decode(step, len(stops), _opts(new, sample), every=every)
    n = min(new, max(stops) + 1)  # the first step where every row had emitted EOS, or the end
    want = torch.tensor([[1 + i if i < stop else 0 for i in range(n)] for stop in stops])
    assert torch.equal(tokens, want)
    assert logits is not None
    assert (logits[0, :, VOCAB - 1] + 100.0).tolist() == list(range(n))  # step i's logits
    if every == 1:  # read every step: no step past the last
        assert len(calls) == n and len(syncs) == n
    else:  # read every 8 steps, and once at the end; at most 7 steps past the last
        assert len(syncs) <= new // 8 + 2
        assert n <= len(calls) <= min(new, -(-n // 8) * 8)


def test_without_eos_every_step_runs_and_nothing_is_read(syncs):
    step, calls = _fake_step([3, 3])
    tokens, _ = generation._decode(step, 2, _opts(5, eos=()), every=8)
    assert tokens.shape == (2, 5) and len(calls) == 5 and syncs == []


def test_reads_are_spaced_on_a_gpu_greedy_only():
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert generation._sync_every(gpu, _opts(4)) == generation.SYNC_EVERY
    assert generation._sync_every(gpu, _opts(4, sample=True)) == 1
    assert generation._sync_every(cpu, _opts(4)) == 1
