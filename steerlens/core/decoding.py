"""KV-cached decoding steps for every path a model can take, and the guard that checks them.

Generation runs one step function per batch: the prompt first, then one token a call, the
keys and values of earlier positions held in a cache. Three paths build such steps:

* ``"tl"`` on a ``TransformerBridge``: the bridge's HF model, whose wrapped modules fire the
  TransformerLens hooks (a researcher's own hooks included), with a ``DynamicCache``;
* ``"tl"`` on a ``HookedTransformer``: its own ``TransformerLensKeyValueCache``;
* ``"hf"``: a plain HF model (the fast path's twin, ``steerlens.core.engines.hf``).

**Why a guard.** Which argument carries the cache, and who writes to it, belongs to
transformers and TransformerLens, and both move: transformers 5.24 renamed the decoder
layers' ``past_key_values`` argument to ``cache``, and TransformerLens 3.9's attention bridge
reads only the old names, so every cached step on a bridge silently ignored the prompt
(logits off by 14 on the tiny model) while the full forward stayed right. So a cached step
is checked before a path is used: prefill a few tokens (one row left-padded), decode one
more, and compare the last position's logits with a full forward of the whole, unpadded
sequence. A path that fails is refused with an error naming it and the installed versions
(``DecodingError``); ``engine="auto"`` routes around a refused fast path, and refuses, with
the reason, where only a refused path could run. The same check reads the residual-stream
hook names the steering hooks use: each must exist, fire once with ``[batch, pos, d_model]``
and hand block ``l``'s output on as block ``l + 1``'s input.

``adapt_bridge_cache`` fixes the 5.24 break where it is: each attention bridge of a loaded
model is handed the cache under the name it reads. The guard then shows it works, on the
locked versions and the newest alike.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
import weakref
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch
from torch import Tensor
from transformer_lens import TransformerLensKeyValueCache  # in 3.9 and 4.x
from transformers import DynamicCache

from steerlens.core.hook_names import resid_post, resid_pre

__all__ = [
    "DecodingError",
    "HookPointError",
    "adapt_bridge_cache",
    "check_hf_model",
    "check_tl_path",
    "hf_steps",
    "installed_versions",
    "refuse_tl",
    "tl_refusal",
    "tl_steps",
]

logger = logging.getLogger(__name__)

Steps = Callable[[Tensor | None], Tensor]
"""``step(None)`` runs the prompt, ``step(next_ids)`` one more token; both return the last
position's logits ``[batch, vocab]``."""

# Relative error allowed between a cached step and a full forward (centred logits): float32
# differs in the last bits (~1e-6); bf16 rounding reaches a few 1e-2 on deep models; a cache
# that is ignored or dropped is O(1) (1.5 on the tiny model).
_TOL = {torch.float32: 1e-3, torch.float64: 1e-3}
_TOL_LOW = 0.3  # not yet measured on a GPU: bf16 residual error was 0.054 on an 8B-shaped model
_REFUSED_TL: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_PACKAGES = ("torch", "transformers", "transformer-lens")


class DecodingError(RuntimeError):
    """A decoding path whose KV-cached step does not reproduce a full forward pass."""


class HookPointError(DecodingError):
    """The residual hook points steering uses are missing, or no longer read the stream."""


def installed_versions() -> str:
    """``torch X, transformers Y, transformer-lens Z``: what a refusal names."""
    parts = []
    for name in _PACKAGES:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def _new_cache() -> Any:
    """The cache of the HF paths (a module-level factory, so a test can replace it)."""
    return DynamicCache()


Prefill = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Any] | None]
"""A prompt pass of ``(input_ids, attention_mask, position_ids)`` other than the plain one:
its last position's logits and the KV cache it filled, or None to run the plain one."""


def hf_steps(
    hf: Any, input_ids: Tensor, attention_mask: Tensor, prefill: Prefill | None = None
) -> Steps:
    """Last-position logits of an HF causal LM: the prompt first (by ``prefill`` where it
    gives one), then one token a call."""
    state: dict[str, Any] = {
        "mask": attention_mask,
        "pos": (attention_mask.long().cumsum(-1) - 1).clamp(min=0),
        "cache": _new_cache(),
    }
    cache_kwarg = _cache_kwarg(type(hf))

    def step(nxt: Tensor | None) -> Tensor:
        if nxt is None:
            ids = input_ids
            shared = None if prefill is None else prefill(ids, state["mask"], state["pos"])
            if shared is not None:
                logits, state["cache"] = shared
                return logits
        else:
            ids = nxt[:, None]
            state["mask"] = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=1)
            state["pos"] = state["pos"][:, -1:] + 1
        out = hf(
            input_ids=ids,
            attention_mask=state["mask"],
            position_ids=state["pos"],
            use_cache=True,
            logits_to_keep=1,
            **{cache_kwarg: state["cache"]},
        )
        return out.logits[:, -1]

    return step


def _cache_kwarg(model_class: Any) -> str:
    """The name the installed transformers gives the cache argument (``cache`` from 5.24,
    where ``past_key_values`` still works with a deprecation warning on every call)."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def tl_steps(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Steps:
    """Last-position logits of a HookedTransformer through its own KV cache."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, input_ids.shape[0])
    # The TL cache keeps the mask of past positions; each call passes its new positions' mask.
    step_mask = torch.ones_like(attention_mask[:, :1])

    def step(nxt: Tensor | None) -> Tensor:
        if nxt is None:
            return model(input_ids, attention_mask=attention_mask, past_kv_cache=cache)[:, -1]
        return model(nxt[:, None], attention_mask=step_mask, past_kv_cache=cache)[:, -1]

    return step


def adapt_bridge_cache(bridge: Any) -> int:
    """Hand each attention bridge of ``bridge`` its KV cache under the name it reads.

    transformers >= 5.24 passes the cache to attention modules as ``cache=``; TransformerLens
    3.9's ``AttentionBridge._update_kv_cache`` reads ``past_key_values`` (or ``layer_past``).
    The method is wrapped on this model's instances only (nothing global changes); with a
    transformers that still passes ``past_key_values``, the wrapper passes it on untouched.
    Returns the number of modules adapted.
    """
    n = 0
    for mod in bridge.modules():
        update = getattr(type(mod), "_update_kv_cache", None)
        if update is None or "_update_kv_cache" in mod.__dict__:
            continue
        mod._update_kv_cache = types.MethodType(  # type: ignore[method-assign]
            _reads_cache_kwarg(update), mod
        )
        n += 1
    return n


def _reads_cache_kwarg(update: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(update)
    def wrapped(self: Any, key: Tensor, value: Tensor, **kwargs: Any) -> Any:
        old_names = kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None
        if old_names and kwargs.get("cache") is not None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return update(self, key, value, **kwargs)

    return wrapped


def _probe_ids(vocab: int, device: torch.device) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Two rows, the second left-padded by three: ``(ids, mask, unpadded rows)``."""
    full = (torch.arange(1, 9) * 7919 % max(vocab - 1, 1)).to(device)
    short = full[3:]
    ids = torch.stack([full, torch.cat([torch.zeros_like(full[:3]), short])])
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask, [full, short]


def _step_error(
    steps: Callable[[Tensor, Tensor], Steps],
    full_logits: Callable[[Tensor, int], Tensor],
    ids: Tensor,
    mask: Tensor,
    rows: list[Tensor],
) -> float:
    """Worst relative error (centred logits) of one cached step against full forwards of
    the unpadded rows (``full_logits(row_ids, row_index)``)."""
    with torch.inference_mode():
        step = steps(ids[:, :-1], mask[:, :-1])
        step(None)
        got = step(ids[:, -1]).float()
        want = [full_logits(r[None], i)[0, -1].float() for i, r in enumerate(rows)]
    errs = []
    for g, w in zip(got, want, strict=True):
        g, w = g - g.mean(), w - w.mean()
        errs.append(float((g - w).norm() / w.norm().clamp_min(1e-12)))
    return float("inf") if any(e != e for e in errs) else max(errs)


def _failure(path: str, detail: str) -> str:
    return (
        f"KV-cached decoding on the {path} does not reproduce a full forward pass ({detail}) "
        f"with {installed_versions()}. Install the locked versions (`make install`, "
        "requirements.lock) or report the combination."
    )


def _check(
    path: str,
    steps: Callable[[Tensor, Tensor], Steps],
    full_logits: Callable[[Tensor, int], Tensor],
    probe: tuple[Tensor, Tensor, list[Tensor]],
    dtype: torch.dtype,
) -> str | None:
    """None when a cached step reproduces the full forward on ``path``, else the reason."""
    try:
        err = _step_error(steps, full_logits, *probe)
    except Exception as exc:  # a cache the installed versions cannot use fails the same way
        return _failure(path, f"{type(exc).__name__}: {exc}")
    tol = _TOL.get(dtype, _TOL_LOW)
    logger.debug("cached-step check on the %s: relative error %.3g", path, err)
    if not err < tol:  # NaN fails too
        return _failure(path, f"relative logit error {err:.3g}, allowed {tol:g}")
    return None


def check_hf_model(hf: Any, path: str = "fast path (plain HF model)") -> str | None:
    """The cached-step check on a plain HF causal LM; None when it passes."""
    param = next(hf.parameters())
    probe = _probe_ids(int(hf.config.vocab_size), param.device)
    return _check(
        path,
        functools.partial(hf_steps, hf),
        lambda ids, row: hf(input_ids=ids).logits,
        probe,
        param.dtype,
    )


def check_tl_path(model: Any) -> str | None:
    """The hook-point and cached-step checks on a model's TransformerLens path (the bridge's
    hooked HF modules, or a HookedTransformer's own cache): None when the cached step
    reproduces the full forward, else the reason. Raises ``HookPointError`` when the hook
    points steering uses are wrong (every engine steers through those names)."""
    param = next(model.parameters())
    probe = _probe_ids(int(model.cfg.d_vocab), param.device)
    why, logits = _hook_names_problem(model, probe[2][0])
    if why is not None:
        raise HookPointError(f"TransformerLens hook points: {why}")
    hf = getattr(model, "original_model", None)
    if hf is not None:
        path = "TransformerLens path (TransformerBridge hooks)"
        steps: Callable[[Tensor, Tensor], Steps] = functools.partial(hf_steps, hf)
        forward: Callable[[Tensor], Tensor] = lambda ids: hf(input_ids=ids).logits  # noqa: E731
    else:
        path = "TransformerLens path (HookedTransformer KV cache)"
        steps, forward = functools.partial(tl_steps, model), model

    def full(ids: Tensor, row: int) -> Tensor:  # the first row's forward ran, under the hooks
        return logits if row == 0 else forward(ids)

    return _check(path, steps, full, probe, param.dtype)


def _hook_names_problem(model: Any, ids: Tensor) -> tuple[str | None, Tensor]:
    """Every ``blocks.{l}.hook_resid_pre/post`` the steering hooks use exists, fires once
    with ``[batch, pos, d_model]``, and block ``l``'s output is block ``l + 1``'s input.
    Returns the problem (or None) and the logits of the forward of ``ids`` that showed it."""
    n, d, pos = int(model.cfg.n_layers), int(model.cfg.d_model), int(ids.shape[-1])
    names = [f(lyr) for lyr in range(n) for f in (resid_pre, resid_post)]
    points = model.hook_dict  # a bridge rebuilds it on every access (8 ms on 30 layers)
    missing = [name for name in names if name not in points]
    seen: dict[str, list[Tensor]] = {name: [] for name in names}

    def grab(name: str) -> Callable[..., None]:
        def fn(module: Any, args: Any, output: Tensor) -> None:
            seen[name].append(output.detach())

        return fn

    # plain PyTorch hooks on the hook points (model.hooks() costs 0.5 s on a 30-layer bridge)
    handles = []
    try:
        for name in names:
            if name not in missing:
                handles.append(points[name].register_forward_hook(grab(name)))
        with torch.inference_mode():
            logits = model(ids[None])
    finally:
        for h in handles:
            h.remove()
    if missing:
        return (
            f"the hook points steerlens steers are missing ({', '.join(missing[:3])} ...) "
            f"with {installed_versions()}: TransformerLens renamed them",
            logits,
        )
    for name, got in seen.items():
        if len(got) != 1 or tuple(got[0].shape) != (1, pos, d):
            shapes = [tuple(t.shape) for t in got]
            return (
                f"the hook point {name} fired {len(got)} time(s) with shapes {shapes} on one "
                f"forward of {pos} tokens (expected once, [1, {pos}, {d}]) "
                f"with {installed_versions()}",
                logits,
            )
    for lyr in range(n - 1):
        if not torch.equal(seen[resid_post(lyr)][0], seen[resid_pre(lyr + 1)][0]):
            return (
                f"{resid_post(lyr)} is not {resid_pre(lyr + 1)} with {installed_versions()}: "
                "the hook points no longer read the residual stream between blocks",
                logits,
            )
    return None, logits


def refuse_tl(model: Any, reason: str) -> None:
    """Record that the model's TransformerLens path must not decode (``reason`` says why)."""
    _REFUSED_TL[model] = reason


def tl_refusal(model: Any) -> str | None:
    """Why the model's TransformerLens path is refused for decoding, or None."""
    return _REFUSED_TL.get(model)
