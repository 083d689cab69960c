"""Zero-shot MMLU agrees with lm-evaluation-harness item for item, where it is installed
(``pip install lm-eval``; not part of the lock, so CI skips this)."""

from __future__ import annotations

import pytest
import torch

import steerlens as sl
from steerlens.core._embedded import _cache_dir

lm_eval = pytest.importorskip("lm_eval")


@pytest.mark.integration
def test_mmlu_log_probs_equal_lm_evaluation_harness(embedded):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    items = sl.data.load_mmlu(n=6, seed=0)
    ours = sl.evaluation.mmlu_accuracy(embedded, items, batch_size=3)
    lm = HFLM(pretrained=str(_cache_dir()), device="cpu", batch_size=1, dtype="float32")
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
    theirs = torch.tensor([lp for lp, _ in lm.loglikelihood(requests)]).view(len(items), 4)
    torch.testing.assert_close(ours.logprobs.float(), theirs.float(), rtol=0, atol=1e-3)
    assert ours.predictions == theirs.argmax(-1).tolist()
