"""``sl.generate(..., engine="vllm")``: the rows become vLLM requests, each with its own
vector, α, gate and condition, steered by the worker (``steerlens.serve.worker``) with the
rule of steerlens' own hooks. The prompts are encoded by steerlens (chat template, response
prefix) and sent as token ids, a condition's mean pools the same content tokens, and the
tokens come back cut at the first EOS as steerlens' engines cut them. With a condition and
``return_tokens``, ``Generation.projections`` / ``.conditions`` come from steerlens' own
reader (one prompt pass of the model in this process). Greedy decoding only.
One engine per model and dtype is kept for the process (vLLM starts in tens of seconds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from steerlens.core.conditions import Condition, split_gate
from steerlens.core.gates import Gate
from steerlens.core.models import HookedModel
from steerlens.core.tokens import Prompt, content_masks, encode_prompts
from steerlens.core.vectors import SteeringVector
from steerlens.run.generation import Generation, _alphas, _eos_ids
from steerlens.run.generation import generate as generate_here
from steerlens.serve.engine import SteeredLLM
from steerlens.serve.spec import SteerSpec

__all__ = ["engine_for", "gate_name", "generate", "shutdown"]

_ENGINES: dict[tuple[str, str], SteeredLLM] = {}


def gate_name(gate: Gate) -> str:
    """The ``parse_gate`` name of a position gate."""
    inf = float("inf")
    if gate.start == -inf and gate.stop == inf:
        return "all"
    if gate.start == -inf and gate.stop == 0:
        return "prefill"
    if gate.start == 0 and gate.stop == inf:
        return "generated"
    if gate.start == -inf and float(gate.stop).is_integer() and gate.stop > 0:
        return f"first:{int(gate.stop)}"
    raise ValueError(f"{gate} has no name the server knows (all, prefill, generated, first:K)")


def engine_for(model: HookedModel, **kwargs: Any) -> SteeredLLM:
    """The process's vLLM engine for ``model`` (made on first use)."""
    dtype = str(next(iter(model.parameters())).dtype).removeprefix("torch.")
    key = (str(model.cfg.model_name), dtype)
    if key not in _ENGINES:
        _ENGINES[key] = SteeredLLM(key[0], dtype=dtype, **kwargs)
    return _ENGINES[key]


def shutdown() -> None:
    """Stop every engine ``engine_for`` made (they also stop when the process exits)."""
    while _ENGINES:
        _ENGINES.popitem()[1].close()


def generate(
    model: HookedModel,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    steering: SteeringVector | Sequence[SteeringVector] | None = None,
    alpha: float | Sequence[float] | torch.Tensor = 1.0,
    gate: Any = "all",
    chat: bool | None = None,
    system: str | None = None,
    response_prefix: str | Sequence[str] | None = None,
    stop_at_eos: bool = True,
    return_tokens: bool = False,
) -> list[str] | Generation:
    """``sl.generate`` on vLLM (its arguments; greedy only)."""
    n = len(prompts)
    alphas = _alphas(alpha, n)
    vectors = [steering] * n if isinstance(steering, SteeringVector) else steering
    position, condition = split_gate(gate)
    if vectors is not None and len(vectors) != n:
        raise ValueError(f"{len(vectors)} per-row vectors but there are {n} prompts")
    if vectors is None and condition is not None:
        raise ValueError("a Condition gates a steering vector: give one")
    llm = engine_for(model)
    ids = encode_prompts(model, prompts, chat=chat, system=system, response_prefix=response_prefix)
    cond_name = llm.add_condition(condition) if isinstance(condition, Condition) else None
    specs: list[SteerSpec | None] = []
    names: dict[int, str] = {}  # a vector shared by many rows is checked and hashed once
    for i in range(n):
        v = None if vectors is None else vectors[i]
        if v is None:
            specs.append(None)
            continue
        if id(v) not in names:
            v.validate(model)
            names[id(v)] = llm.add_vector(v)
        own = "own" if v.condition is not None else "none"
        specs.append(SteerSpec(names[id(v)], alphas[i], gate_name(position), cond_name or own))
    conditioned = cond_name is not None or any(
        v is not None and v.condition is not None for v in (vectors or [])
    )
    pools = content_masks(model, prompts, ids, chat=chat, system=system) if conditioned else None
    eos = _eos_ids(model) if stop_at_eos else []
    out = llm.generate_ids(
        [x.tolist() for x in ids],
        specs,
        max_new_tokens,
        pool_masks=None if pools is None else [m.tolist() for m in pools],
        stop_token_ids=eos,
        ignore_eos=not stop_at_eos,
    )
    tokens = []
    for toks in out:
        stop = next((j for j, t in enumerate(toks) if t in eos), len(toks))
        tokens.append(torch.tensor(toks[:stop], dtype=torch.long))
    tok = model.tokenizer
    assert tok is not None
    texts = [str(tok.decode(t, skip_special_tokens=True)) for t in tokens]
    if not return_tokens:
        return texts
    projections = decisions = None
    if conditioned:  # the projections, as steerlens' reader makes them at the prompt pass
        read = generate_here(
            model,
            prompts,
            max_new_tokens=1,
            steering=steering,
            alpha=alpha,
            gate=gate,
            chat=chat,
            system=system,
            response_prefix=response_prefix,
            return_tokens=True,
            progress_bar=False,
        )
        assert isinstance(read, Generation)
        projections, decisions = read.projections, read.conditions
    return Generation(texts, ids, tokens, projections=projections, conditions=decisions)
