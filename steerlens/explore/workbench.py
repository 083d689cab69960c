"""The workbench's computation: one prompt, one vector, an α ladder, token by token.

``run_ladder`` generates every α of the ladder in one batched ``generate`` call (and the
unsteered reply, with no hook at all, in another), then teacher-forces each reply through the
model unsteered and steered (the same gate, the same prompt length) to give every generated
token its KL to the unsteered model, the residual's projection on the vector and its top
alternatives with and without steering, all read at the position that predicted the token;
beside each α it measures the per-token KL on neutral text with every position steered (one
batched pass for the whole ladder, the measure KL budgets use),
the reply's perplexity under the unsteered model, a repetition score and the length.
Everything returned is plain data (``Ladder.to_dict`` for the page's store).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlens.core.gates import Gate, parse_gate
from steerlens.core.hook_names import hook_name
from steerlens.core.hooks import steering
from steerlens.core.models import HookedModel, model_name
from steerlens.core.vectors import SteeringVector
from steerlens.run.divergence import calibrate_alpha, steering_divergence
from steerlens.run.generation import Generation, generate

from .state import ExploreState

__all__ = ["Ladder", "LadderRow", "TokenView", "prepare_vector", "run_ladder"]

logger = logging.getLogger(__name__)
TOP_K = 5
Progress = Callable[[str], None]


@dataclass
class TokenView:
    """One generated token, read at the position that predicted it: its text, the KL (nats)
    of the steered from the unsteered next-token distribution (teacher-forced on this reply),
    the residual's projection on the vector's unit direction at the vector's first layer
    (after the steering was added), whether that position was steered, whether the reply
    differs from the unsteered one from here on, and the top alternatives (token,
    probability) with and without steering."""

    text: str
    kl: float
    projection: float
    steered: bool
    changed: bool
    top_steered: list[tuple[str, float]]
    top_unsteered: list[tuple[str, float]]


@dataclass
class LadderRow:
    """One α of the ladder (``alpha`` None: the unsteered reply)."""

    alpha: float | None
    text: str
    tokens: list[TokenView]
    kl: float
    """Mean per-token KL over this reply (teacher-forced), nats."""
    neutral_kl: float | None
    """Mean per-token KL on the neutral texts at this α, every position steered, nats."""
    perplexity: float | None
    """The reply's perplexity under the unsteered model (how plausible the text stays)."""
    repetition: float
    """The share of the reply's token bigrams that repeat an earlier one (0: none; near 1:
    one phrase over and over)."""
    length: int
    fired: bool | None = None
    """With a condition: whether it fired on this prompt (None: no condition)."""
    first_change: int | None = None
    """The first token where this reply departs from the unsteered one (None: identical)."""


@dataclass
class Ladder:
    """The unsteered reply and one row per α, with where the vector came from."""

    state: dict[str, Any]
    unsteered: LadderRow
    rows: list[LadderRow]
    alphas: list[float]
    provenance: dict[str, Any] = field(default_factory=dict)
    condition_projection: float | None = None

    @property
    def reproduced(self) -> bool | None:
        """Whether α = 0 gave exactly the unsteered tokens (None: no α = 0 on the ladder)."""
        zero = [r for r in self.rows if r.alpha == 0.0]
        if not zero:
            return None
        return [t.text for t in zero[0].tokens] == [t.text for t in self.unsteered.tokens]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reproduced"] = self.reproduced
        return d


def prepare_vector(
    vector: SteeringVector, state: ExploreState, model: HookedModel
) -> SteeringVector:
    """The vector as the state applies it: its layers restricted to ``state.layers``, its
    condition's threshold moved to ``state.threshold``; checked against the model."""
    if state.layers:
        missing = sorted(set(state.layers) - set(vector.layers))
        if missing:
            raise ValueError(f"layers {missing}: the vector has layers {vector.layers}")
        vector = vector.select(state.layers)
    if vector.condition is not None and state.threshold is not None:
        vector = vector.conditioned(vector.condition.with_threshold(state.threshold))
    vector.validate(model)
    return vector


def _decode(model: HookedModel, ids: Sequence[int]) -> list[str]:
    tok = model.tokenizer
    assert tok is not None
    return [str(tok.decode([int(i)])) for i in ids]


def _top(model: HookedModel, logp: Tensor) -> list[tuple[str, float]]:
    values, ids = logp.topk(TOP_K)
    names = _decode(model, ids.tolist())
    return [(n, round(float(v.exp()), 4)) for n, v in zip(names, values, strict=True)]


def _teacher_forced(
    model: HookedModel,
    prompt: Tensor,
    reply: Tensor,
    vector: SteeringVector,
    alpha: float,
    gate: Any,
    *,
    steer: bool,
) -> tuple[Tensor, Tensor]:
    """Teacher-forced on ``prompt + reply``, steered by ``alpha * vector`` under ``gate`` or
    not at all: the log-probabilities ``[reply, vocab]`` that predicted each reply token, and
    the residual's projection on the vector's unit direction at the first steered layer, read
    at the same positions (the one predicting each token; after the steering was added)."""
    ids = torch.cat([prompt, reply]).to(model.cfg.device)[None]
    n_prompt, n_reply = len(prompt), len(reply)
    at = slice(n_prompt - 1, n_prompt - 1 + n_reply)
    seen: dict[str, Tensor] = {}

    def keep(resid: Tensor, *, hook: Any) -> None:
        seen["resid"] = resid[0, at].detach()

    capture = [(hook_name(vector.layers[0], vector.hook), keep)]
    with torch.inference_mode():
        if steer:  # the capture hook after the steering one: it sees the steered residual
            with (
                steering(model, vector, alpha, gate, prompt_lengths=[n_prompt]),
                model.hooks(fwd_hooks=capture),  # type: ignore[arg-type]
            ):
                logits = model(ids)
        else:
            with model.hooks(fwd_hooks=capture):  # type: ignore[arg-type]
                logits = model(ids)
    logp = logits[0, at].float().log_softmax(-1).cpu()
    direction = vector.directions[vector.layers[0]].float().cpu()
    unit = direction / direction.norm().clamp_min(1e-12)
    return logp, seen["resid"].float().cpu() @ unit


def _first_change(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _ladder_alphas(
    model: HookedModel, vector: SteeringVector, state: ExploreState, neutral: Sequence[str]
) -> list[float]:
    if not state.kl_budgets:
        return list(state.alphas)
    if not neutral:
        raise ValueError("kl_budgets need neutral texts")
    plain = vector.conditioned(None)
    alphas = [
        calibrate_alpha(model, plain, neutral, b, use_cache=False)[0] for b in state.kl_budgets
    ]
    return [0.0, *alphas]


def run_ladder(
    model: HookedModel,
    state: ExploreState,
    vector: SteeringVector,
    *,
    neutral: Sequence[str] = (),
    provenance: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> Ladder:
    """The unsteered reply and one steered reply per α of ``state`` (in one batched
    ``generate`` call), each token teacher-forced for its KL, projection and alternatives.

    Args:
        vector: the vector to apply, as ``prepare_vector`` returns it.
        neutral: texts for the per-α neutral KL (and for KL budgets); none: not measured.
        progress: called with a short message before each stage (the page's status line); an
            exception it raises (``Cancelled``: the page's cancel button) stops the ladder there.
    """
    say = progress or (lambda _msg: None)
    if state.kl_budgets:
        say(f"calibrating α to {len(state.kl_budgets)} KL budgets")
    alphas = _ladder_alphas(model, vector, state, neutral)
    gate = parse_gate(state.gate)
    say(f"generating {len(alphas) + 1} replies")
    rows = [state.prompt] * (len(alphas) + 1)
    common: dict[str, Any] = dict(
        max_new_tokens=state.max_new_tokens,
        chat=state.chat,
        progress_bar=False,
        return_tokens=True,
    )
    base = generate(model, rows[:1], **common)
    steered = generate(model, rows[1:], steering=vector, alpha=alphas, gate=gate, **common)
    assert isinstance(base, Generation) and isinstance(steered, Generation)
    neutral_kl: list[float | None] = [None] * len(alphas)
    if neutral:  # neutral text has no prompt / reply split: every position steered, as the
        say("neutral-text KL")  # study's side-effect measure and the KL budgets read it
        divs = steering_divergence(
            model,
            [t for _ in alphas for t in neutral],
            vector.conditioned(None),
            [a for a in alphas for _ in neutral],
        )
        n = len(neutral)
        neutral_kl = [sum(d.kl for d in divs[i * n : (i + 1) * n]) / n for i in range(len(alphas))]
    say("teacher-forcing the unsteered reply")
    base_ids = base.tokens[0].tolist()
    plain = vector.conditioned(None)
    base_logp, base_proj = _teacher_forced(
        model, base.prompt_ids[0], base.tokens[0], plain, 0.0, gate, steer=False
    )
    out_rows: list[LadderRow] = []
    unsteered_row = _row(
        model,
        None,
        base.texts[0],
        base.tokens[0],
        base_logp,
        base_logp,
        base_proj,
        None,
        base_ids,
        None,
        None,
    )
    conditions: list[bool | None] = (
        list(steered.conditions) if steered.conditions else [None] * len(alphas)
    )
    for i, alpha in enumerate(alphas):
        say(f"teacher-forcing α {alpha:g} ({i + 1}/{len(alphas)})")
        prompt, reply = steered.prompt_ids[i], steered.tokens[i]
        fired = conditions[i]
        # the condition was decided while generating: steer the teacher-forced pass exactly
        # when it fired (its own pooling is the generation's, not re-read here)
        a = alpha if fired is not False else 0.0
        u_logp, u_proj = _teacher_forced(model, prompt, reply, plain, 0.0, gate, steer=False)
        if a == 0.0:  # adding 0·v changes no bit: the unsteered pass is the steered one
            s_logp, proj = u_logp, u_proj
        else:
            s_logp, proj = _teacher_forced(model, prompt, reply, plain, a, gate, steer=True)
        out_rows.append(
            _row(
                model,
                alpha,
                steered.texts[i],
                reply,
                s_logp,
                u_logp,
                proj,
                Gate.parse(gate) if fired is not False and a != 0 else None,
                base_ids,
                fired,
                neutral_kl[i],
            )
        )
    return Ladder(
        state=state.to_dict(),
        unsteered=unsteered_row,
        rows=out_rows,
        alphas=alphas,
        provenance=provenance or describe(model, vector, state),
        condition_projection=steered.projections[0] if steered.projections else None,
    )


def _row(
    model: HookedModel,
    alpha: float | None,
    text: str,
    reply: Tensor,
    s_logp: Tensor,
    u_logp: Tensor,
    proj: Tensor,
    gate: Gate | None,
    base_ids: list[int],
    fired: bool | None,
    neutral_kl: float | None,
) -> LadderRow:
    ids = reply.tolist()
    names = _decode(model, ids)
    kl = (s_logp.exp() * (s_logp - u_logp)).sum(-1).clamp_min(0.0)
    first = _first_change(ids, base_ids) if alpha is not None else None
    tokens = []
    for t, name in enumerate(names):
        # token t is predicted at offset t - 1 from the prompt's end (the prompt's last
        # position predicts the first generated token)
        on = gate is not None and gate.start <= t - 1 < gate.stop
        tokens.append(
            TokenView(
                text=name,
                kl=round(float(kl[t]), 6),
                projection=round(float(proj[t]), 4),
                steered=bool(on),
                changed=first is not None and t >= first,
                top_steered=_top(model, s_logp[t]),
                top_unsteered=_top(model, u_logp[t]),
            )
        )
    picked = u_logp.gather(-1, reply.cpu()[:, None])[:, 0] if ids else torch.zeros(0)
    ppl = float(torch.exp(-picked.mean())) if ids else None
    return LadderRow(
        alpha=alpha,
        text=text,
        tokens=tokens,
        kl=round(float(kl.mean()), 6) if ids else 0.0,
        neutral_kl=None if neutral_kl is None else round(neutral_kl, 6),
        perplexity=None if ppl is None else round(ppl, 3),
        repetition=_repetition(ids),
        length=len(ids),
        fired=fired,
        first_change=first,
    )


def _repetition(ids: Sequence[int]) -> float:
    grams = list(itertools.pairwise(ids))
    return round(1.0 - len(set(grams)) / len(grams), 4) if grams else 0.0


def describe(model: HookedModel, vector: SteeringVector, state: ExploreState) -> dict[str, Any]:
    """The provenance strip: model, hook, layers, method, seed, engine, steerlens version and
    where the vector came from."""
    from steerlens.core._version import __version__

    return {
        "model": model_name(model),
        "vector_model": vector.model_name,
        "hook": vector.hook,
        "layers": vector.layers,
        "method": vector.method,
        "vector": state.vector,
        "condition": None if vector.condition is None else vector.condition.describe(),
        "gate": state.gate,
        "seed": state.seed,
        "engine": "auto",
        "steerlens": __version__,
        "source": {
            k: v
            for k, v in vector.metadata.items()
            if k in ("data", "users", "user", "method", "layers", "n_pairs")
        },
    }
