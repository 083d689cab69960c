"""Zero-shot MMLU, with or without steering: lm-evaluation-harness's ``mmlu`` prompt and scoring.

The prompt is string-for-string the harness's default zero-shot ``mmlu`` template: the
description line "The following are multiple choice questions (with answers) about
{subject}." (underscores in the subject as spaces), a blank line, the stripped question, the
"A. …" to "D. …" lines and "Answer:". The prediction is the choice among " A", " B", " C",
" D" with the highest log-probability after the prompt (raw text, the tokenizer's own BOS:
no chat template, as the harness runs base and instruct models alike).

Steering is whatever hooks are active: call inside ``sl.steering(model, vec, alpha, gate)``.
The prompt is the prefill, so ``"prefill"``, ``FirstK(k)`` and ``"all"`` steer it and
``"generated"`` leaves it unsteered. Per-row α / vectors follow their items (one batching
loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from steerlens.core.batching import Batch
from steerlens.core.engines import Engine, PassEngineName
from steerlens.core.models import HookedModel
from steerlens.core.tokens import tokenize
from steerlens.data.mmlu import LETTERS, MMLUItem
from steerlens.metrics.stats import bootstrap_interval
from steerlens.run.passes import forward_batches

__all__ = ["MMLUResult", "mmlu_accuracy", "mmlu_prompt"]


def mmlu_prompt(item: MMLUItem) -> str:
    """The lm-evaluation-harness ``mmlu`` zero-shot prompt of one item."""
    subject = " ".join(item.subject.split("_"))
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    lines = [item.question.strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices, strict=True)]
    return head + "\n".join(lines) + "\nAnswer:"


@dataclass
class MMLUResult:
    """Per item: the predicted letter index, whether it is right, and the 4 log-probs."""

    predictions: list[int]
    correct: list[bool]
    logprobs: Tensor  # [item, 4]
    subjects: list[str]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if self.correct else float("nan")

    def interval(self, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
        """Bootstrap 95 % interval of the accuracy over items."""
        return bootstrap_interval(np.asarray(self.correct, dtype=float), n_boot=n_boot, seed=seed)


def _choice_ids(model: HookedModel) -> tuple[Tensor, list[int]]:
    """The tokens every answer " A".." D" starts with, and each answer's last token.

    Most tokenizers have one token per answer (no shared prefix); byte-level ones split the
    space off, which is then scored once for all four (it adds the same log-prob to each).
    """
    toks = [tokenize(model, [f" {x}"], add_special_tokens=False)[0] for x in LETTERS]
    prefix = toks[0][:-1]
    if any(t.numel() != toks[0].numel() or not torch.equal(t[:-1], prefix) for t in toks):
        raise ValueError("the answers ' A'..' D' must differ only in their last token")
    return prefix, [int(t[-1]) for t in toks]


def mmlu_accuracy(
    model: HookedModel,
    items: Sequence[MMLUItem],
    *,
    batch_size: int = 8,
    max_tokens: int | None = 0,
    progress_bar: bool = False,
    engine: PassEngineName = "auto",
) -> MMLUResult:
    """Score ``items`` zero-shot under the hooks active on ``model`` (one batched pass).

    ``engine`` as in ``generate``: ``"auto"`` runs on the fast path (the HF modules the
    bridge wraps, with open ``sl.steering()`` blocks carried onto it) when no other hook is
    active — MMLU prompts run to thousands of tokens, where the bridge's attention is slow.
    Batches hold at most ``batch_size`` rows and ``max_tokens`` padded tokens (0: the
    device's ``token_budget``; long and short prompts pack), and the unembedding runs only where the answer is scored
    (``Engine.logits_at``).
    """
    if not items:
        raise ValueError("no MMLU items to score")
    prefix, letters = _choice_ids(model)
    choices = torch.tensor(letters)
    prompts = tokenize(model, [mmlu_prompt(it) for it in items])
    ids = [torch.cat([p, prefix]) for p in prompts]
    k = int(prefix.numel())

    def run(eng: Engine, batch: Batch) -> list[Tensor]:
        enc = batch.enc
        # prompt + shared prefix end at enc.lengths[row]; the letter follows: k + 1 positions
        spans = [range(end - k - 1, end) for end in enc.lengths]
        picked = eng.logits_at(enc.input_ids, enc.attention_mask, spans)
        out = []
        for row in range(len(batch.rows)):
            end = enc.lengths[row]
            logp = picked[row].float().log_softmax(-1)
            shared = sum(float(logp[j, enc.input_ids[row, end - k + j]]) for j in range(k))
            out.append(logp[k, choices.to(logp.device)].cpu() + shared)
        return out

    scored = forward_batches(
        model,
        ids,
        run,
        engine=engine,
        batch_size=batch_size,
        max_tokens=max_tokens,
        prompt_lengths=[int(p.numel()) for p in prompts],
        progress_bar=progress_bar,
        description="mmlu",
    )
    lp = torch.stack(scored)
    preds = lp.argmax(-1).tolist()
    return MMLUResult(
        predictions=preds,
        correct=[p == it.answer for p, it in zip(preds, items, strict=True)],
        logprobs=lp,
        subjects=[it.subject for it in items],
    )
