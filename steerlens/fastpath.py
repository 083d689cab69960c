"""The generation fast path: the same steering arithmetic on a plain HF copy of the model.

TransformerLens hooks cost Python wrapper time on every module call; for generation on small
models that is a large share of the step. The fast path keeps a plain ``transformers`` copy of
the model (the *twin*, loaded once per model object, lazily) and adds ``alpha * v`` with
PyTorch forward hooks on its decoder layers, through the very hook functions the
TransformerLens path uses (``add_vector_hook``), so gates and per-row strengths behave the
same. In compatibility mode the bridge's ``blocks.{l}.hook_resid_post`` equals HF's output of
decoder layer ``l`` (tested), so a vector means the same thing on both.

Cost: a second copy of the weights (about 540 MB for the embedded model). ``generate`` uses it
only where it is exact: vectors on ``hook_resid_post`` / ``hook_resid_pre``, no other
TransformerLens hooks active on the model, and a model steerlens loaded itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import Tensor

from steerlens.hooks import Gate, GateSpec, add_vector_hook
from steerlens.models import HookedModel, load_spec, weight_fingerprint
from steerlens.vectors import SteeringVector

__all__ = [
    "can_use_fast_path",
    "capture_residuals",
    "hf_twin",
    "torch_steering",
    "twin_is_current",
]

_TWINS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_PRINTS: weakref.WeakKeyDictionary[Any, Tensor] = weakref.WeakKeyDictionary()
FAST_HOOKS = ("hook_resid_post", "hook_resid_pre")


def twin_is_current(model: HookedModel) -> bool:
    """Whether the model's weights are those its twin was built from."""
    ref = _PRINTS.get(model)
    return ref is not None and torch.equal(ref, weight_fingerprint(model))


def _active_tl_hooks(model: HookedModel) -> bool:
    return any(hp.fwd_hooks for hp in model.hook_dict.values())


def can_use_fast_path(model: HookedModel, hook: str = "hook_resid_post") -> bool:
    """True when the twin is cheap and gives exactly what the TransformerLens hooks would.

    Cheap: the embedded and tiny models (or a twin already built). A named model (e.g. an 8B
    Llama) would need a second full copy of its weights, so ``engine="auto"`` leaves it on the
    TransformerLens path; ask for ``engine="hf"`` to build its twin deliberately.
    """
    from steerlens._embedded import EMBEDDED_NAME
    from steerlens._tiny import TINY_NAME

    spec = load_spec(model)
    if spec is None or _active_tl_hooks(model):
        return False
    if hook not in FAST_HOOKS:
        return False
    if model in _TWINS:
        return twin_is_current(model)
    if spec.name not in (EMBEDDED_NAME, TINY_NAME):
        return False
    return bool(torch.equal(weight_fingerprint(model), spec.fingerprint))


def resolve_engine(model: HookedModel, hook: str, engine: str) -> Any | None:
    """The twin to run on, or None for the TransformerLens path (validates ``engine``)."""
    if engine not in ("auto", "tl", "hf"):
        raise ValueError(f"engine must be 'auto', 'tl' or 'hf', got {engine!r}")
    if engine == "tl":
        return None
    if engine == "hf":
        if hook not in FAST_HOOKS:
            raise ValueError(f"engine='hf' works on {FAST_HOOKS}, not {hook}")
        return hf_twin(model)
    if not can_use_fast_path(model, hook):
        return None
    twin = _TWINS.get(model)  # already checked against the current weights
    return twin if twin is not None else hf_twin(model)


def hf_twin(model: HookedModel) -> Any:
    """The plain HF copy of ``model`` (loaded on first use, then cached).

    Raises ``ValueError`` if the model's weights changed after loading: the twin is made from
    the original weights and would silently disagree with an edited model.
    """
    twin = _TWINS.get(model)
    if twin is not None:
        if not twin_is_current(model):
            raise ValueError(
                "the model's weights changed after its fast-path twin was built; "
                "use engine='tl' (the TransformerLens path sees the edited weights)"
            )
        return twin
    spec = load_spec(model)
    if spec is None:
        raise ValueError("the fast path needs a model loaded with steerlens.load_model")
    now = weight_fingerprint(model)  # before loading a copy that could not be used
    if not torch.equal(now, spec.fingerprint):
        raise ValueError(
            "the model's weights changed since steerlens loaded it, so a plain copy would "
            "disagree with it; use engine='tl'"
        )
    from steerlens._embedded import EMBEDDED_NAME, load_embedded_hf
    from steerlens._tiny import TINY_NAME, tiny_hf_model

    if spec.name == TINY_NAME:
        twin, _ = tiny_hf_model(seed=spec.seed, dtype=spec.dtype)
    elif spec.name == EMBEDDED_NAME:
        twin, _ = load_embedded_hf(dtype=spec.dtype, attn_implementation="sdpa")
    else:
        from transformers import AutoModelForCausalLM

        twin = AutoModelForCausalLM.from_pretrained(spec.name, dtype=spec.dtype)
    device = next(model.parameters()).device
    twin = twin.to(device).eval()  # type: ignore[arg-type]
    _TWINS[model] = twin
    _PRINTS[model] = now
    return twin


def _decoder_layers(twin: Any) -> Any:
    base = getattr(twin, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(twin).__name__}: no model.layers to hook (fast path supports decoder-only HF models)"
        )
    return layers


@contextmanager
def torch_steering(
    twin: Any,
    vector: SteeringVector,
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: GateSpec | Gate = "all",
) -> Iterator[None]:
    """Add ``alpha * vector`` to the twin's decoder-layer outputs (or inputs, for resid_pre)."""
    if vector.hook not in FAST_HOOKS:
        raise ValueError(f"the fast path steers {FAST_HOOKS}, not {vector.hook}")
    layers = _decoder_layers(twin)
    handles = []
    try:
        for layer in vector.layers:
            fn = add_vector_hook(vector.directions[layer], alpha, gate)
            module = layers[layer]
            if vector.hook == "hook_resid_post":
                handles.append(module.register_forward_hook(_post(fn)))
            else:
                handles.append(module.register_forward_pre_hook(_pre(fn), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _post(fn: Any) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0], hook=None), *output[1:])
        return fn(output, hook=None)

    return hook


def _pre(fn: Any) -> Any:
    def hook(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (fn(args[0], hook=None), *args[1:]), kwargs
        kwargs["hidden_states"] = fn(kwargs["hidden_states"], hook=None)
        return args, kwargs

    return hook


class _Stop(Exception):
    """Raised by the last capture hook: the layers above it are not needed."""


def capture_residuals(
    twin: Any, input_ids: Tensor, attention_mask: Tensor, layers: Sequence[int], hook: str
) -> list[Tensor]:
    """``blocks.{l}.{hook}`` for each layer, read from the twin's decoder layers.

    ``hook_resid_post`` is decoder layer ``l``'s output, ``hook_resid_pre`` its input. The
    forward pass stops after the last needed layer (and never reaches the unembedding).
    """
    if hook not in FAST_HOOKS:
        raise ValueError(f"the fast path reads {FAST_HOOKS}, not {hook}")
    modules = _decoder_layers(twin)
    last = max(layers)
    captured: dict[int, Tensor] = {}
    handles = []

    def post(layer: int) -> Any:
        def fn(module: Any, args: Any, output: Any) -> None:
            captured[layer] = (output[0] if isinstance(output, tuple) else output).detach()
            if layer == last:
                raise _Stop

        return fn

    def pre(layer: int) -> Any:
        def fn(module: Any, args: Any, kwargs: Any) -> None:
            captured[layer] = (args[0] if args else kwargs["hidden_states"]).detach()
            if layer == last:
                raise _Stop

        return fn

    try:
        for layer in sorted(set(layers)):
            if hook == "hook_resid_post":
                handles.append(modules[layer].register_forward_hook(post(layer)))
            else:
                handles.append(
                    modules[layer].register_forward_pre_hook(pre(layer), with_kwargs=True)
                )
        with suppress(_Stop):
            twin.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [captured[layer] for layer in layers]
