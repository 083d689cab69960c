"""Zero-shot MMLU agrees with lm-evaluation-harness item for item, where it is installed
(``pip install lm-eval``; not part of the lock, so CI skips this)."""

from __future__ import annotations

import pytest
import torch

import steerlens as sl
from steerlens.core._embedded import _cache_dir

lm_eval = pytest.importorskip("lm_eval")


def _loglikelihoods(lm, items) -> torch.Tensor:
    """lm-evaluation-harness's log-probabilities of " A".." D" after each item's prompt."""
    from lm_eval.api.instance import Instance

    requests = [
        Instance(
            request_type="loglikelihood",
            doc={},
            arguments=(sl.evaluation.mmlu_prompt(item), f" {letter}"),
            idx=j,
        )
        for item in items
        for j, letter in enumerate("ABCD")
    ]
    return torch.tensor([lp for lp, _ in lm.loglikelihood(requests)]).view(len(items), 4)


@pytest.mark.integration
def test_mmlu_log_probs_equal_lm_evaluation_harness(embedded):
    from lm_eval.models.huggingface import HFLM

    items = sl.data.load_mmlu(n=6, seed=0)
    ours = sl.evaluation.mmlu_accuracy(embedded, items, batch_size=3)
    lm = HFLM(pretrained=str(_cache_dir()), device="cpu", batch_size=1, dtype="float32")
    theirs = _loglikelihoods(lm, items)
    torch.testing.assert_close(ours.logprobs.float(), theirs.float(), rtol=0, atol=1e-3)
    assert ours.predictions == theirs.argmax(-1).tolist()


@pytest.mark.integration
def test_an_exported_vector_steers_lm_evaluation_harness_as_sl_steering(embedded, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel

    g = torch.Generator().manual_seed(0)
    d = int(embedded.cfg.d_model)
    vec = sl.SteeringVector(
        {15: torch.randn(d, generator=g), 16: torch.randn(d, generator=g)},
        model_name=sl.model_name(embedded),
    )
    items = sl.data.load_mmlu(n=6, seed=1)
    with sl.steering(embedded, vec, alpha=2.0):
        ours = sl.evaluation.mmlu_accuracy(embedded, items, batch_size=3)
    plain = sl.evaluation.mmlu_accuracy(embedded, items, batch_size=3)
    assert float((ours.logprobs - plain.logprobs).abs().max()) > 1e-2  # the vector matters
    lm = SteeredModel(
        pretrained=str(_cache_dir()),
        steer_path=str(vec.to_lm_eval(tmp_path / "steer.pt", alpha=2.0)),
        device="cpu",
        batch_size=1,
        dtype="float32",
    )
    theirs = _loglikelihoods(lm, items)
    torch.testing.assert_close(ours.logprobs.float(), theirs.float(), rtol=0, atol=1e-3)
    assert ours.predictions == theirs.argmax(-1).tolist()
