"""Batched, steered generation on either model class and either engine.

One KV-cache decoding loop (``_decode``) serves every engine (``steerlens.core.engines``):
the bridge's HF model (its TransformerLens hooks fire, one position a step) or a
HookedTransformer's own KV cache (``tl``), the plain HF model of the fast path (``hf``), and
its compiled static-cache step (``compiled``). Prompts go through the one
batching loop (``steerlens.core.batching``): left-padded, sorted by length, rows back in input
order, and per-row α / vectors follow their prompts. A padded batch gives the tokens of
one-at-a-time runs (tested on every backend x engine).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from steerlens.core.batching import Batch, condition_masks, map_batches
from steerlens.core.conditions import split_gate
from steerlens.core.engines import Engine, EngineName, resolve_engine
from steerlens.core.hooks import (
    AnyGate,
    HookPair,
    active_steering,
    condition_state,
    steering_hooks,
)
from steerlens.core.models import HookedModel, model_device
from steerlens.core.tokens import Prompt, encode_prompts
from steerlens.core.vectors import SteeringVector

__all__ = ["Generation", "generate"]


@dataclass
class Generation:
    """Generated text plus, on request, new token ids and per-step logits, in input order.

    With a ``Condition`` (``gate=`` or carried by the vector), ``projections`` holds each
    prompt's projection on the condition's direction and ``conditions`` whether it was steered
    (projection above the threshold; with ``soft`` its α was scaled by the sigmoid instead)."""

    texts: list[str]
    prompt_ids: list[Tensor]
    tokens: list[Tensor]
    logits: list[Tensor] | None = None
    projections: list[float] | None = None
    conditions: list[bool] | None = None


def _alphas(alpha: float | Sequence[float] | Tensor, n: int) -> list[float]:
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        return [float(alpha)] * n
    values = torch.as_tensor(alpha, dtype=torch.float32).flatten().tolist()
    if len(values) != n:
        raise ValueError(f"alpha has {len(values)} values but there are {n} prompts")
    return [float(v) for v in values]


def _eos_ids(model: HookedModel) -> list[int]:
    ids: set[int] = set()
    tok = model.tokenizer
    if tok is not None and tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    hf = getattr(model, "original_model", None)
    gc_eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    if isinstance(gc_eos, int):
        ids.add(gc_eos)
    elif isinstance(gc_eos, list):
        ids.update(int(i) for i in gc_eos)
    return sorted(ids)


@overload
def generate(
    model: HookedModel,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    steering: SteeringVector | Sequence[SteeringVector] | None = None,
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: AnyGate = "all",
    chat: bool | None = None,
    system: str | None = None,
    response_prefix: str | Sequence[str] | None = None,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    progress_bar: bool = True,
    engine: EngineName | Literal["vllm"] = "auto",
    return_tokens: Literal[False] = False,
    return_logits: Literal[False] = False,
) -> list[str]: ...


@overload
def generate(
    model: HookedModel,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    steering: SteeringVector | Sequence[SteeringVector] | None = None,
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: AnyGate = "all",
    chat: bool | None = None,
    system: str | None = None,
    response_prefix: str | Sequence[str] | None = None,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    progress_bar: bool = True,
    engine: EngineName | Literal["vllm"] = "auto",
    return_tokens: bool = ...,
    return_logits: bool = ...,
) -> list[str] | Generation: ...


def generate(
    model: HookedModel,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    steering: SteeringVector | Sequence[SteeringVector] | None = None,
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: AnyGate = "all",
    chat: bool | None = None,
    system: str | None = None,
    response_prefix: str | Sequence[str] | None = None,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    return_tokens: bool = False,
    return_logits: bool = False,
    progress_bar: bool = True,
    engine: EngineName | Literal["vllm"] = "auto",
) -> list[str] | Generation:
    """Generate continuations of ``prompts``, optionally steered.

    Args:
        prompts: user prompts or conversations (lists of ``{"role", "content"}`` messages
            ending with a user turn), chat-formatted with the model's template (``chat=None``,
            the default: when it has one, as ``cache_activations`` and scoring do); raw text
            with ``chat=False``.
        response_prefix: text the reply is forced to start with (one string or one per
            prompt); the returned text is what the model added after it.
        steering: a ``SteeringVector`` to add while generating, or a list with one vector per
            prompt (48 users in one batch).
        alpha: strength; a float, or one value per prompt (a whole dose-response sweep in one
            batch: repeat the prompt and give each copy its α).
        gate: ``"all"``, ``"prefill"``, ``FirstK(k)`` or ``"generated"``; or a ``Condition``
            (steer only the prompts whose pooled activation projects above its threshold,
            decided once per prompt), alone or with a position gate
            (``Condition(...) & FirstK(4)``).
        do_sample / temperature / top_k / top_p / seed: sampling (greedy by default, as in the
            research).
        return_tokens / return_logits: return a ``Generation`` with new token ids and per-step
            raw logits ``[steps, vocab]`` (float32, CPU) instead of a list of strings.
        engine: ``"tl"`` runs through the model's TransformerLens hooks (any hooks you added
            fire too); ``"hf"`` runs the same hook functions as plain PyTorch hooks on the
            plain HF model of the fast path (``steerlens.core.engines``): on a bridge it shares the
            bridge's weights (no copy), on a HookedTransformer it is a copy; open
            ``sl.steering()`` blocks are carried onto it, and any other hook on the model is a
            ``ValueError`` (it would not fire); copies of one prompt in a batch (a sweep's
            cells) run the layers below the lowest steered one once, where a probe finds that
            exact for the architecture. ``"compiled"`` runs the fast path's model with a
            static KV cache and the decoding step compiled (a CUDA graph on a GPU), the
            steering held as data inside it (``steerlens.core.engines.compiled``): the same tokens,
            faster once compiled. ``"auto"`` (default) takes the fast path on a bridge when
            no other hook is active (compiled on CUDA), else ``"tl"``. ``"vllm"`` (in the serve
            environment, ``make test-serve``; greedy only) sends the rows to vLLM as requests,
            each with its own vector, α, gate and condition (``steerlens.serve``).

    Returns:
        The generated texts (special tokens and the EOS removed), or a ``Generation``.
    """
    _check_args(prompts, max_new_tokens, batch_size, do_sample, temperature)
    if engine == "vllm":
        return _on_vllm(
            model,
            prompts,
            max_new_tokens,
            steering,
            alpha,
            gate,
            chat,
            system,
            response_prefix,
            stop_at_eos,
            return_tokens,
            do_sample or return_logits,
        )
    n = len(prompts)
    if n == 0:
        return (
            Generation([], [], [], [] if return_logits else None)
            if (return_tokens or return_logits)
            else []
        )
    alphas = _alphas(alpha, n)
    if steering is None and not isinstance(alpha, int | float):
        raise ValueError("a per-row alpha needs a steering vector")
    if isinstance(steering, Sequence) and len(steering) != n:
        raise ValueError(f"{len(steering)} per-row vectors but there are {n} prompts")
    if steering is None and split_gate(gate)[1] is not None:
        raise ValueError("a Condition gates a steering vector: give one")
    own = (
        steering_hooks(
            model,
            steering,
            alphas[0] if isinstance(alpha, int | float) else torch.tensor(alphas),
            gate,
        )
        if steering is not None
        else []
    )
    hook = str(own[0][0]).rsplit(".", 1)[-1] if own else "hook_resid_post"
    ids = encode_prompts(model, prompts, chat=chat, system=system, response_prefix=response_prefix)
    pool = condition_masks(model, ids, prompts, pairs=own, chat=chat, system=system)
    eos = _eos_ids(model) if stop_at_eos else []
    gen = torch.Generator(device=model_device(model))
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    opts = _Decode(
        max_new_tokens, do_sample, temperature, top_k, top_p, eos, return_logits, gen, seed
    )
    eng = resolve_engine(model, hook, engine, decoding=True, pairs=own)
    if model.training:  # eval() walks every module of a bridge: skip it when already off
        model.eval()

    def run(batch: Batch) -> list[tuple[Tensor, Tensor | None]]:
        enc = batch.enc
        new, step_logits = _run_batch(eng, enc.input_ids, enc.attention_mask, opts)
        new = new.cpu()  # one transfer a batch
        step_logits = step_logits.float().cpu() if step_logits is not None else None
        return [_until_eos(new[row], step_logits, row, eos) for row in range(len(batch.rows))]

    with eng.hooks(own), torch.inference_mode():
        results = map_batches(
            model,
            ids,
            run,
            batch_size=batch_size,
            side="left",
            pool_masks=pool,
            progress_bar=progress_bar,
            description="generate",
        )
    tok = model.tokenizer
    assert tok is not None
    done = [t for t, _ in results]
    texts: list[str] = [str(tok.decode(t, skip_special_tokens=True)) for t in done]
    if not (return_tokens or return_logits):
        return texts
    return _generation(model, texts, ids, results, own, return_logits)


def _generation(
    model: HookedModel,
    texts: list[str],
    ids: list[Tensor],
    results: list[tuple[Tensor, Tensor | None]],
    own: list[HookPair],
    return_logits: bool,
) -> Generation:
    """The ``Generation`` of a call: its tokens, logits, and its condition's decisions."""
    # the call's own condition, else one of an open steering() block
    state = condition_state(own) or condition_state(active_steering(model))
    projections = None if state is None else state.projections
    return Generation(
        texts=texts,
        prompt_ids=ids,
        tokens=[t for t, _ in results],
        logits=[lg for _, lg in results] if return_logits else None,  # type: ignore[misc]
        projections=None if projections is None else projections.tolist(),
        conditions=None
        if state is None or projections is None
        else (projections > state.condition.threshold).tolist(),
    )


def _check_args(
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool,
    temperature: float,
) -> None:
    """``generate``'s argument checks (a clear error before any work)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if do_sample and temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling")


def _on_vllm(
    model: HookedModel,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    steering: SteeringVector | Sequence[SteeringVector] | None,
    alpha: float | Sequence[float] | Tensor,
    gate: AnyGate,
    chat: bool | None,
    system: str | None,
    response_prefix: str | Sequence[str] | None,
    stop_at_eos: bool,
    return_tokens: bool,
    unsupported: bool,
) -> list[str] | Generation:
    """``engine="vllm"``: ``steerlens.serve.generation.generate``. serve is a layer above this
    one, imported by name on use only (it needs vLLM, which only the serve environment has)."""
    if unsupported:
        raise ValueError("engine='vllm' decodes greedily and returns no logits here")
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "engine='vllm' needs vLLM, which is not installed here: the serve environment "
            "(make test-serve builds .venv-serve; the serve-cpu / serve extras)"
        )
    serve = importlib.import_module("steerlens.serve.generation")
    return serve.generate(  # type: ignore[no-any-return]
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        steering=steering,
        alpha=alpha,
        gate=gate,
        chat=chat,
        system=system,
        response_prefix=response_prefix,
        stop_at_eos=stop_at_eos,
        return_tokens=return_tokens,
    )


def _until_eos(
    toks: Tensor, step_logits: Tensor | None, row: int, eos: list[int]
) -> tuple[Tensor, Tensor | None]:
    """A row's new tokens up to its first EOS, and its step logits up to and including the
    step that produced it."""
    stop = len(toks)
    for j, t in enumerate(toks.tolist()):
        if t in eos:
            stop = j
            break
    kept = None if step_logits is None else step_logits[row, : min(stop + 1, len(toks))]
    return toks[:stop], kept


@dataclass(frozen=True)
class _Decode:
    """Decoding options shared by both engines."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    eos: list[int]
    want_logits: bool
    generator: torch.Generator
    seed: int | None


def _run_batch(
    eng: Engine, input_ids: Tensor, attention_mask: Tensor, opts: _Decode
) -> tuple[Tensor, Tensor | None]:
    """New tokens ``[batch, steps]`` (EOS-padded after a row stops) and optional raw logits.

    One KV-cache decoding loop serves every engine, so sampling is the same everywhere.
    """
    step = eng.steps(input_ids, attention_mask, opts.max_new_tokens)
    new, logits = _decode(step, input_ids.shape[0], opts)
    if logits is not None and not eng.bound:
        # A copy has the raw unembedding; TransformerLens centres it (softmax unchanged).
        logits = logits - logits.mean(-1, keepdim=True)
    return new, logits


SYNC_EVERY = 8
"""On a GPU, greedy decoding asks the device whether every row has finished once every this
many steps (a host sync, which a CUDA graph pays at every step), not after each token."""


def _sync_every(device: torch.device, opts: _Decode) -> int:
    """Steps between reads of "every row finished": ``SYNC_EVERY`` for greedy decoding on a
    GPU; 1 on a CPU (a read costs nothing there, extra steps do) and when sampling (no extra
    step may draw from the generator, so later batches sample what they sampled before)."""
    return SYNC_EVERY if device.type == "cuda" and not opts.do_sample else 1


def _decode(
    step: Callable[[Tensor | None], Tensor], batch: int, opts: _Decode, every: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Greedy or sampled decoding; rows that emitted an EOS are padded with it.

    Whether every row has finished is kept on the device, step by step, and read every
    ``every`` steps (default ``_sync_every``); the steps run after the first one where every
    row had finished (their tokens are the EOS fill) are then cut: the same tokens as
    stopping at once."""
    logits = step(None)
    device = logits.device
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    fill = opts.eos[0] if opts.eos else 0
    eos_t = torch.tensor(opts.eos, device=device, dtype=torch.long)
    every = every or _sync_every(device, opts)
    new: list[Tensor] = []
    kept: list[Tensor] = []
    all_done: list[Tensor] = []  # per step, on the device
    for i in range(opts.max_new_tokens):
        if opts.want_logits:
            kept.append(logits)
        nxt = _pick(logits, opts)
        nxt = torch.where(finished, torch.full_like(nxt, fill), nxt)
        new.append(nxt)
        if opts.eos:
            finished |= torch.isin(nxt, eos_t)
            all_done.append(finished.all())
            if (i + 1) % every == 0 and bool(all_done[-1]):
                break
        if i == opts.max_new_tokens - 1:
            break
        logits = step(nxt)
    if all_done and every > 1:  # one read: the first step where every row had finished
        hit = torch.stack(all_done).nonzero()
        n = int(hit[0, 0]) + 1 if len(hit) else len(new)
        new, kept = new[:n], kept[:n]
    return torch.stack(new, dim=1), (torch.stack(kept, dim=1) if opts.want_logits else None)


def _pick(logits: Tensor, opts: _Decode) -> Tensor:
    if not opts.do_sample:
        return logits.argmax(-1)
    top_k, top_p = opts.top_k, opts.top_p
    scores = logits.float() / opts.temperature
    if top_k:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, idx = scores.sort(dim=-1, descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum - sorted_scores.softmax(-1) > top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, idx, sorted_scores)
    return torch.multinomial(scores.softmax(-1), 1, generator=opts.generator).squeeze(-1)
