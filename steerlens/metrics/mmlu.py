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

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from steerlens.core.batching import Batch
from steerlens.core.engines import Engine, PassEngineName, resolve_engine
from steerlens.core.hooks import active_steering, steering, steering_hooks
from steerlens.core.models import HookedModel
from steerlens.core.tokens import tokenize
from steerlens.core.vectors import SteeringVector
from steerlens.data.mmlu import LETTERS, MMLUItem
from steerlens.metrics.stats import bootstrap_interval
from steerlens.run.passes import forward_batches, reading, start_layer

__all__ = ["MMLUResult", "mmlu_accuracy", "mmlu_by_alpha", "mmlu_prompt"]

T = TypeVar("T")


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
    task = _Task(model, items)

    def run(eng: Engine, batch: Batch) -> list[Tensor]:
        enc = batch.enc
        return task.scored(
            batch, eng.logits_at(enc.input_ids, enc.attention_mask, task.spans(batch))
        )

    scored = task.forward(run, engine, batch_size, max_tokens, progress_bar)
    return task.result(scored)


def mmlu_by_alpha(
    model: HookedModel,
    items: Sequence[MMLUItem],
    vector: SteeringVector,
    alphas: Sequence[float],
    *,
    batch_size: int = 8,
    max_tokens: int | None = 0,
    progress_bar: bool = False,
    engine: PassEngineName = "auto",
) -> dict[float, MMLUResult]:
    """``mmlu_accuracy`` with ``vector`` steering every position at each of ``alphas`` (α 0:
    unsteered), in one batched loop: with nothing else acting on the model, each batch runs
    its unsteered pass once and every α's pass starts at the first steered block from the
    residual entering it (``Engine.logits_from``), the unembedding only where the answer is
    scored; the same numbers as a pass per α inside ``sl.steering``, to float rounding. Where
    the engine cannot start midway (or other hooks act), one whole pass per α."""
    wanted = sorted({float(a) for a in alphas})
    if not wanted:
        raise ValueError("no α to score MMLU at")
    pairs = {a: steering_hooks(model, vector, a) for a in wanted if a}
    eng = resolve_engine(model, "hook_resid_post", engine, pairs=next(iter(pairs.values()), []))
    quiet = not active_steering(model) and not eng.hooked()
    start = start_layer(eng, next(iter(pairs.values()))) if quiet and pairs else None
    if start is None:  # a whole pass per α
        out = {}
        for a in wanted:
            with steering(model, vector, alpha=a) if a else nullcontext():
                out[a] = mmlu_accuracy(
                    model,
                    items,
                    batch_size=batch_size,
                    max_tokens=max_tokens,
                    progress_bar=progress_bar,
                    engine=engine,
                )
        return out
    task = _Task(model, items)

    def run(eng: Engine, batch: Batch) -> list[dict[float, Tensor]]:
        enc = batch.enc
        spans = task.spans(batch)
        reader, seen = reading(start)
        with eng.hooks(reader):
            got = {0.0: eng.logits_at(enc.input_ids, enc.attention_mask, spans)}
        for a, hooks in pairs.items():
            with eng.hooks(hooks):
                got[a] = eng.logits_from(seen[-1], enc.attention_mask, start, spans)
        scored = {a: task.scored(batch, picked) for a, picked in got.items()}
        return [{a: scored[a][row] for a in wanted} for row in range(len(batch.rows))]

    rows = task.forward(run, eng, batch_size, max_tokens, progress_bar)
    return {a: task.result([r[a] for r in rows]) for a in wanted}


class _Task:
    """The items' token rows and how an answer is read from the logits at their ends."""

    def __init__(self, model: HookedModel, items: Sequence[MMLUItem]) -> None:
        if not items:
            raise ValueError("no MMLU items to score")
        self.model, self.items = model, list(items)
        prefix, letters = _choice_ids(model)
        self.choices = torch.tensor(letters)
        self.prompts = tokenize(model, [mmlu_prompt(it) for it in items])
        self.ids = [torch.cat([p, prefix]) for p in self.prompts]
        self.k = int(prefix.numel())

    def spans(self, batch: Batch) -> list[range]:
        """Per row, the shared prefix's positions and the letter's: ``k + 1`` positions
        ending where the prompt and the shared prefix end."""
        return [range(end - self.k - 1, end) for end in batch.enc.lengths]

    def scored(self, batch: Batch, picked: Sequence[Tensor]) -> list[Tensor]:
        """Per row, the four answers' log-probabilities (the shared prefix's added)."""
        enc, k = batch.enc, self.k
        out = []
        for row in range(len(batch.rows)):
            end = enc.lengths[row]
            logp = picked[row].float().log_softmax(-1)
            shared = sum(float(logp[j, enc.input_ids[row, end - k + j]]) for j in range(k))
            out.append(logp[k, self.choices.to(logp.device)].cpu() + shared)
        return out

    def forward(
        self,
        run: Callable[[Engine, Batch], Sequence[T]],
        engine: PassEngineName | Engine,
        batch_size: int,
        max_tokens: int | None,
        progress_bar: bool,
    ) -> list[T]:
        return forward_batches(
            self.model,
            self.ids,
            run,
            engine=engine,
            batch_size=batch_size,
            max_tokens=max_tokens,
            prompt_lengths=[int(p.numel()) for p in self.prompts],
            progress_bar=progress_bar,
            description="mmlu",
        )

    def result(self, scored: Sequence[Tensor]) -> MMLUResult:
        lp = torch.stack(list(scored))
        preds = lp.argmax(-1).tolist()
        return MMLUResult(
            predictions=preds,
            correct=[p == it.answer for p, it in zip(preds, self.items, strict=True)],
            logprobs=lp,
            subjects=[it.subject for it in self.items],
        )
