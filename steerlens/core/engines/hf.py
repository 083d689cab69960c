"""The fast path: the same steering hooks as plain PyTorch hooks on a plain HF model.

TransformerLens hook points cost Python wrapper time on every module call; on small models
and in decoding loops that is a large share of a step. The fast path runs a plain
``transformers`` model (the *twin*) and registers the very ``(hook_name, fn)`` pairs that the
TransformerLens path would register (``steering_hooks``), as forward (pre-)hooks on its
decoder layers: ``blocks.{l}.hook_resid_post`` is the output of decoder layer ``l``,
``blocks.{l}.hook_resid_pre`` its input. Gates, per-row α and per-row vectors therefore
behave identically on both engines.

**A TransformerBridge's twin is bound, not copied.** The bridge wraps the HF modules in
place, and its parameters *are* the HF parameters. The twin is built from the HF config on
the ``meta`` device (no memory) and every parameter and buffer is then bound to the bridge's
own tensor (the same ``Parameter`` objects). No weights are copied or loaded, so the fast
path costs no memory, works for any size (Llama-3.1-8B on a GPU included) and sees in-place
edits of the weights (ablations, patches, training). Compatibility mode's weight processing
(RMSNorm folded into the next linear layers, centred unembedding) is applied to those very
tensors, so the twin computes what the bridge computes; a probe forward pass at build time
checks that the twin reproduces the bridge's residual stream, and where it does not (an
architecture whose compatibility mode rewrites the computation) the TransformerLens path
runs. Requirements: a decoder-only HF model with ``model.layers`` (Llama, Mistral, Qwen2,
Gemma, SmolLM ...) on one device (a ``device_map`` across devices stays on the TL path).

**A HookedTransformer has its own weight layout** (``W_Q[head, d_model, d_head]``), so no
HF module can share it. ``engine="hf"`` builds a *copy* there (a second set of weights,
loaded from the same source and checked against the model's weights at load);
``engine="auto"`` never does.

``engine="auto"`` takes the fast path only when it is exact: a bridge, a resid_pre/post
hook, and no hooks on the model's modules other than open ``sl.steering()`` contexts, which
are carried onto the twin. Any other hook (TransformerLens hooks of your own, plain PyTorch
hooks from nnsight, pyvene or user code, a patched ``forward``, global module hooks) keeps
the call on the TransformerLens path, where they fire; ``engine="hf"`` then refuses with a
``ValueError`` rather than silently skipping them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import Tensor

from steerlens.core.decoding import (
    DecodingError,
    Steps,
    _cache_kwarg,
    _new_cache,
    check_hf_model,
    hf_steps,
)
from steerlens.core.hooks import HookPair, active_steering, resid_post
from steerlens.core.models import (
    HookedModel,
    is_bridge,
    load_spec,
    model_device,
    weight_fingerprint,
)

from ._binding import FAST_HOOKS, bind_twin, decoder_layers, hook_point
from ._prefill import only_layers, prefill_exact, shared_prefill
from ._resume import resumed_logits, whole_run
from .base import Engine

__all__ = [
    "FAST_HOOKS",
    "HFEngine",
    "capture_residuals",
    "fast_path_blocker",
    "foreign_hooks",
    "hf_twin",
    "refuse_fast_path",
    "twin_hooks",
]

logger = logging.getLogger(__name__)
_TWINS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_REFUSED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_DECODING_REFUSED: weakref.WeakSet[Any] = weakref.WeakSet()  # refused by the cached-step check
_PRINTS: weakref.WeakKeyDictionary[Any, Tensor] = weakref.WeakKeyDictionary()
# Read-only hooks that these libraries put on the HF modules to record outputs (TransformerLens
# bridge blocks capture the pre-norm residual; transformers records layer outputs).
_LIBRARY_CAPTURE = (
    ("transformer_lens.model_bridge", "_capture_"),
    ("transformers.", "output_capturing_hook"),
)
# Relative error the probe allows: float32 (eager vs sdpa attention) is ~1e-6; bf16 rounding
# grows with depth (0.054 at the last layer of a random-init 32-layer Llama-3.1-8B-shaped
# model on an H100); a wrongly bound model or a rewritten computation is O(1).
_PROBE_TOL = {torch.float32: 1e-3, torch.float64: 1e-3}
_PROBE_TOL_LOW = 0.15
_BOUND: weakref.WeakKeyDictionary[Any, list[Tensor]] = weakref.WeakKeyDictionary()


class HFEngine(Engine):
    """The fast path: a plain HF model (the *twin*) and the open ``steering()`` hooks it
    carries, registered as PyTorch hooks on its decoder layers."""

    name = "hf"

    def __init__(
        self, model: HookedModel, twin: Any, bound: bool, carried: Sequence[HookPair] = ()
    ) -> None:
        super().__init__(model)
        self.twin = twin
        self.bound = bound
        self.carried = list(carried)
        self._open = 0  # hooks() contexts open on this engine
        self._resumed: tuple[Any, Any] | None = None  # the last sequence logits_resumed ran

    @contextmanager
    def hooks(self, pairs: Sequence[HookPair]) -> Iterator[None]:
        """``pairs`` on the twin, and the carried blocks where no context of this engine
        already put them there (a context opened inside another adds its own pairs only)."""
        every = [*(self.carried if not self._open else []), *pairs]
        with twin_hooks(self.twin, every):
            self._open += 1
            try:
                yield
            finally:
                self._open -= 1

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.twin(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]

    def logits_at(
        self, input_ids: Tensor, attention_mask: Tensor, positions: Sequence[Sequence[int]]
    ) -> list[Tensor]:
        """The unembedding runs only on the union of the rows' positions (transformers'
        ``logits_to_keep``), not on every position of the batch: a prompt scored at its last
        few positions skips most of the vocabulary projection."""
        keep = _kept(positions)
        kw = _keep_kwargs(self.twin, keep, input_ids.device)
        logits = self.twin(input_ids=input_ids, attention_mask=attention_mask, **kw).logits
        return _picked(logits, keep, int(input_ids.shape[1]), positions)

    def capture(
        self, input_ids: Tensor, attention_mask: Tensor, layers: Sequence[int], hook: str
    ) -> list[Tensor]:
        return capture_residuals(self.twin, input_ids, attention_mask, layers, hook)

    def can_start_at(self, layer: int) -> bool:
        """From a middle decoder layer, where a probe found this architecture starts there
        exactly (``_starts_midway``)."""
        return 0 < layer < len(decoder_layers(self.twin)) and _starts_midway(self.twin, layer)

    def forward_from(self, resid: Tensor, attention_mask: Tensor, layer: int) -> Tensor:
        """The twin's decoder layers from ``layer`` on, run on ``resid`` as the input
        embeddings (the layers below set aside for the call, and put back after it, after an
        error too: another forward on the same twin at the same time would run the upper
        layers only, so callers that share a model across threads hold a lock, as the
        explorer does)."""
        if not self.can_start_at(layer):
            raise ValueError(f"this model cannot start a pass at layer {layer}")
        return _upper_logits(self.twin, resid, attention_mask, layer)

    def logits_from(
        self,
        resid: Tensor,
        attention_mask: Tensor,
        layer: int,
        positions: Sequence[Sequence[int]],
    ) -> list[Tensor]:
        """As ``forward_from``, the unembedding only on the union of the rows' positions."""
        if not self.can_start_at(layer):
            raise ValueError(f"this model cannot start a pass at layer {layer}")
        keep = _kept(positions)
        kw = _keep_kwargs(self.twin, keep, resid.device)
        logits = _upper_logits(self.twin, resid, attention_mask, layer, **kw)
        return _picked(logits, keep, int(resid.shape[1]), positions)

    def _check_continues(self, what: str) -> None:
        """``what`` (a pass continuing a prefix's cache) runs without hooks, where it can."""
        if self.carried:
            raise ValueError(f"{what} runs without hooks (an open steering() block acts)")
        if not self.can_share_prefix():
            raise ValueError("this model cannot continue a shared prefix's cache")

    def can_share_prefix(self) -> bool:
        """Where a probe found this architecture's KV cache continues a prefix exactly
        (``_shares_prefix``)."""
        return _shares_prefix(self.twin)

    def logits_after(
        self,
        prefix_ids: Tensor,
        prefix_mask: Tensor,
        owner: Sequence[int],
        input_ids: Tensor,
        attention_mask: Tensor,
        positions: Sequence[Sequence[int]],
    ) -> list[Tensor]:
        """The prefixes run once (their KV cache, no unembedding), then each row's tokens
        continue its prefix's cache (positions counted on from its real length); the
        unembedding only at the rows' ``positions``."""
        self._check_continues("logits_after")
        keep = _kept(positions)
        logits = _continued_logits(
            self.twin, prefix_ids, prefix_mask, owner, input_ids, attention_mask, keep
        )
        return _picked(logits, keep, int(input_ids.shape[1]), positions)

    def capture_after(
        self,
        prefix_ids: Tensor,
        prefix_mask: Tensor,
        owner: Sequence[int],
        input_ids: Tensor,
        attention_mask: Tensor,
        layers: Sequence[int],
        hook: str,
    ) -> list[Tensor]:
        """The prefixes run once up to the last needed layer (their KV cache), then each
        row's tokens continue its prefix's cache; the residuals of the rows' own tokens."""
        self._check_continues("capture_after")

        def run(ids: Tensor, mask: Tensor, **kw: Any) -> list[Tensor]:
            return capture_residuals(self.twin, ids, mask, layers, hook, **kw)

        return _continued(  # type: ignore[no-any-return]
            self.twin, run, prefix_ids, prefix_mask, owner, input_ids, attention_mask
        )

    def can_resume(self, layer: int = 0) -> bool:
        """Rows resume one run's cache (``logits_resumed``) from ``layer``, where the probes
        found a continued cache and (``layer`` > 0) a pass started there exact."""
        return self.can_share_prefix() and (layer == 0 or self.can_start_at(layer))

    def logits_resumed(
        self,
        ids: Tensor,
        cuts: Sequence[int],
        input_ids: Tensor,
        attention_mask: Tensor,
        positions: Sequence[Sequence[int]],
        layer: int = 0,
        resid: Tensor | None = None,
    ) -> list[Tensor]:
        """``resumed_logits`` (``_resume``): ``ids`` runs once, unhooked (its cache kept for
        the engine's next call on the same ``ids``: the batches of one patching run); each
        row runs its own columns after ``ids[:cuts[row]]``, from ``layer`` on, under this
        context's hooks; the unembedding only at the rows' ``positions``."""
        self._check_continues("logits_resumed")
        if not self.can_resume(layer):
            raise ValueError(f"this model cannot resume a run at layer {layer}")
        keep = _kept(positions)
        device = input_ids.device
        key = (ids.cpu().numpy().tobytes(), str(device))
        if self._resumed is None or self._resumed[0] != key:  # once per sequence, not a batch
            run = whole_run(self.twin, ids, device, **_keep_kwargs(self.twin, [0], device))
            self._resumed = (key, run)
        logits = resumed_logits(
            self.twin,
            self._resumed[1],
            int(ids.numel()),
            cuts,
            input_ids,
            attention_mask,
            layer=layer,
            resid=resid,
            **_keep_kwargs(self.twin, keep, device),
        )
        return _picked(logits, keep, int(input_ids.shape[1]), positions)

    def steps(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int) -> Steps:
        """The twin's KV-cached steps; copies of one prompt (a sweep's cells) run the decoder
        layers below the lowest hooked one once (``shared_prefill``)."""
        below = _shared_below(self.twin)
        prefill = (
            None if below is None else functools.partial(shared_prefill, self.twin, below=below)
        )
        return hf_steps(self.twin, input_ids, attention_mask, prefill=prefill)

    def hooked(self) -> bool:
        return bool(self.carried)


def _kept(positions: Sequence[Sequence[int]]) -> list[int]:
    """The union of the rows' positions, sorted (no position at all: any one)."""
    return sorted({p for pos in positions for p in pos}) or [0]


def _keep_kwargs(twin: Any, keep: Sequence[int], device: Any) -> dict[str, Any]:
    """``logits_to_keep`` for ``keep``, where the model takes it."""
    if _keeps_logits(twin):
        return {"logits_to_keep": torch.tensor(list(keep), device=device)}
    return {}


def _picked(
    logits: Tensor, keep: Sequence[int], width: int, positions: Sequence[Sequence[int]]
) -> list[Tensor]:
    """Per row, the logits at its positions, from a pass that returned ``keep``'s columns (or
    every column, where ``logits_to_keep`` was ignored)."""
    if logits.shape[1] == len(keep) and (len(keep) != width or list(keep) == list(range(width))):
        index = {p: j for j, p in enumerate(keep)}
    elif logits.shape[1] == width:  # every position came back (logits_to_keep ignored)
        index = {p: p for p in keep}
    else:
        raise RuntimeError(
            f"the model returned logits for {logits.shape[1]} positions; asked for "
            f"{len(keep)} of {width}"
        )
    return [logits[row, [index[p] for p in pos]] for row, pos in enumerate(positions)]


def _keeps_logits(twin: Any) -> bool:
    """Whether the HF model's forward takes ``logits_to_keep`` (transformers >= 4.50)."""
    try:
        return "logits_to_keep" in inspect.signature(twin.forward).parameters
    except (TypeError, ValueError):
        return False


def foreign_hooks(model: HookedModel) -> str | None:
    """Why hooks other than open ``steering()`` contexts would be skipped, or None."""
    from torch.nn.modules import module as torch_module
    from transformer_lens.hook_points import HookPoint

    n_hooks = 0
    for mod in model.modules():
        if "forward" in mod.__dict__:
            return f"{type(mod).__name__} has a patched forward (e.g. accelerate / nnsight)"
        for fn in [*mod._forward_hooks.values(), *mod._forward_pre_hooks.values()]:
            if isinstance(mod, HookPoint):
                n_hooks += 1
            elif _is_library_capture(fn):
                continue
            else:
                return f"a PyTorch hook ({getattr(fn, '__qualname__', fn)}) is registered on {type(mod).__name__}"
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "global PyTorch module hooks are registered"
    ours = len(active_steering(model))
    if n_hooks != ours:
        return f"{n_hooks - ours} TransformerLens hook(s) other than steerlens steering are active"
    off = [
        name for name, _ in active_steering(model) if str(name).rsplit(".", 1)[-1] not in FAST_HOOKS
    ]
    if off:
        return f"an open steering() context uses {off[0]}, which the fast path cannot reach"
    return None


def _is_library_capture(fn: Any) -> bool:
    module = str(getattr(fn, "__module__", ""))
    name = str(getattr(fn, "__qualname__", ""))
    return any(module.startswith(m) and part in name for m, part in _LIBRARY_CAPTURE)


def fast_path_blocker(model: HookedModel, hook: str = "hook_resid_post") -> str | None:
    """Why ``engine="auto"`` would take the TransformerLens path, or None if it takes the fast path."""
    if hook not in FAST_HOOKS:
        return f"the fast path reaches {FAST_HOOKS}, not {hook}"
    why = foreign_hooks(model)
    if why is not None:
        return why
    if not is_bridge(model):
        return "a HookedTransformer has no HF modules to share (engine='hf' makes a copy)"
    if model in _REFUSED:
        return _REFUSED[model]
    return _bridge_blocker(model)


def _bridge_blocker(model: HookedModel) -> str | None:
    hf = model.original_model
    layers = getattr(getattr(hf, "model", None), "layers", None)
    if layers is None:
        return f"{type(hf).__name__} has no model.layers (decoder-only HF models only)"
    devices = set(getattr(hf, "hf_device_map", {}).values() or [])
    if len(devices) > 1:
        return "the model is spread over several devices with a device_map"
    return None


def refuse_fast_path(model: HookedModel, reason: str) -> str:
    """Record why the fast path cannot be built for ``model`` (kept: later calls take the
    TransformerLens path at once); the reason first recorded is returned."""
    return _REFUSED.setdefault(model, reason)


class _ProbeMismatch(ValueError):
    pass


def hf_twin(model: HookedModel) -> Any:
    """The plain HF model the fast path runs: bound to a bridge's tensors, a copy for a
    HookedTransformer (built on first use, then cached)."""
    if not is_bridge(model):
        return _copy_twin(model)
    twin = _TWINS.get(model)
    if twin is not None and _still_bound(model):
        return twin
    if model in _REFUSED:
        raise (DecodingError if model in _DECODING_REFUSED else _ProbeMismatch)(_REFUSED[model])
    why = _bridge_blocker(model)
    if why is not None:
        raise ValueError(f"no fast path for this model: {why}")
    # (Re)bind: the first use, or the bridge's tensors were replaced (.to(), .half(),
    # load_state_dict(assign=True)) since the last binding.
    twin = bind_twin(model.original_model)
    errs = _probe_error(model, twin)
    tol = _PROBE_TOL.get(next(model.parameters()).dtype, _PROBE_TOL_LOW)
    logger.debug("fast-path probe, relative errors: %s", errs)
    bad = [k for k, e in errs.items() if not e < tol]  # NaN fails too
    if bad:
        worst, err = bad[0], errs[bad[0]]
        _REFUSED[model] = (
            f"the plain HF model does not reproduce the bridge (relative error {err:.3g} "
            f"at {worst}); "
            "compatibility mode changes this architecture's computation, so it stays on the "
            "TransformerLens path"
        )
        raise _ProbeMismatch(_REFUSED[model])
    why = check_hf_model(twin)
    if why is not None:
        _REFUSED[model] = why
        _DECODING_REFUSED.add(model)
        raise DecodingError(why)
    _TWINS[model] = twin
    _BOUND[model] = _own_tensors(model.original_model)
    return twin


def _own_tensors(hf: Any) -> list[Tensor]:
    return [
        *(p for _, p in hf.named_parameters(remove_duplicate=False)),
        *(b for _, b in hf.named_buffers(remove_duplicate=False)),
    ]


def _still_bound(model: HookedModel) -> bool:
    """Whether the bridge still holds the very tensor objects its twin was bound to."""
    bound = _BOUND.get(model)
    now = _own_tensors(model.original_model)
    return (
        bound is not None
        and len(bound) == len(now)
        and all(a is b for a, b in zip(bound, now, strict=True))
    )


def _probe_error(model: HookedModel, twin: Any) -> dict[str, float]:
    """Relative errors between the bridge and the twin on a few tokens, both unsteered:
    the residual stream at three layers and the last position's logits (up to a constant
    shift, which the softmax ignores). Hooks already on the bridge's hook points (an open
    per-row ``steering()`` block, say) are set aside for the probe and put back after it."""
    n = int(model.cfg.n_layers)
    layers = sorted({0, n // 2, n - 1})
    vocab = int(model.cfg.d_vocab)
    ids = (torch.arange(1, 9) * 7919 % max(vocab - 1, 1)).view(1, -1).to(model_device(model))
    ref: dict[int, Tensor] = {}

    def grab(layer: int) -> Any:
        def fn(module: Any, args: Any, output: Tensor) -> None:
            ref[layer] = output.detach().float()

        return fn

    points = list({id(hp): hp for hp in model.hook_dict.values()}.values())
    saved = [(hp._forward_hooks, hp._forward_pre_hooks) for hp in points]
    try:
        for hp in points:
            hp._forward_hooks, hp._forward_pre_hooks = OrderedDict(), OrderedDict()
        for lyr in layers:
            model.hook_dict[resid_post(lyr)].register_forward_hook(grab(lyr))
        with torch.inference_mode():
            logits = model(ids)[0, -1].float()
            got = capture_residuals(twin, ids, torch.ones_like(ids), layers, "hook_resid_post")
            twin_logits = twin(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
    finally:
        for hp, (fwd, pre) in zip(points, saved, strict=True):
            hp._forward_hooks, hp._forward_pre_hooks = fwd, pre

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    errs = {resid_post(lyr): rel(g.float(), ref[lyr]) for lyr, g in zip(layers, got, strict=True)}
    errs["logits"] = rel(twin_logits - twin_logits.mean(), logits - logits.mean())
    return errs


def _copy_twin(model: HookedModel) -> Any:
    """A HookedTransformer's twin: a second copy, loaded as the model was, checked unedited."""
    twin = _TWINS.get(model)
    now = weight_fingerprint(model)
    if twin is not None:
        if not torch.equal(_PRINTS[model], now):
            raise ValueError(
                "the model's weights changed after its fast-path copy was made; "
                "use engine='tl' (the TransformerLens path sees the edited weights)"
            )
        return twin
    spec = load_spec(model)
    if spec is None or spec.fingerprint is None:
        raise ValueError(
            "engine='hf' on a HookedTransformer needs a model loaded with steerlens.load_model"
        )
    if not torch.equal(now, spec.fingerprint):
        raise ValueError(
            "the model's weights changed since steerlens loaded it, so a copy made from the "
            "source would disagree with it; use engine='tl'"
        )
    from steerlens.core._embedded import EMBEDDED_NAME, load_embedded_hf
    from steerlens.core._tiny import TINY_NAME, tiny_hf_model

    if spec.name == TINY_NAME:
        twin, _ = tiny_hf_model(seed=spec.seed, dtype=spec.dtype)
    elif spec.name == EMBEDDED_NAME:
        twin, _ = load_embedded_hf(dtype=spec.dtype, attn_implementation="sdpa")
    else:
        from transformers import AutoModelForCausalLM

        twin = AutoModelForCausalLM.from_pretrained(spec.name, dtype=spec.dtype)
    twin = twin.to(model_device(model)).eval()  # type: ignore[arg-type]
    why = check_hf_model(twin)
    if why is not None:
        raise DecodingError(why)
    _TWINS[model] = twin
    _PRINTS[model] = now
    return twin


@contextmanager
def twin_hooks(twin: Any, pairs: Sequence[HookPair]) -> Iterator[None]:
    """Register TransformerLens-style ``(hook_name, fn)`` pairs on the twin's decoder layers.

    Registered inside ``try``, all removed in ``finally`` (also after a failure part-way).
    """
    layers = decoder_layers(twin)
    handles = []
    try:
        for name, fn in pairs:
            layer, point = hook_point(str(name))
            if point == "hook_resid_post":
                handles.append(layers[layer].register_forward_hook(_post(fn)))
            else:
                handles.append(layers[layer].register_forward_pre_hook(_pre(fn), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _call(fn: Any, x: Tensor) -> Tensor:
    """A TransformerLens hook function on ``x``: None (a hook that only reads) keeps it."""
    out = fn(x, hook=None)
    return x if out is None else out


def _post(fn: Any) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (_call(fn, output[0]), *output[1:])
        return _call(fn, output)

    return hook


def _pre(fn: Any) -> Any:
    def hook(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (_call(fn, args[0]), *args[1:]), kwargs
        kwargs["hidden_states"] = _call(fn, kwargs["hidden_states"])
        return args, kwargs

    return hook


_MIDWAY: weakref.WeakKeyDictionary[Any, dict[int, bool]] = weakref.WeakKeyDictionary()


def _upper_logits(
    twin: Any, resid: Tensor, attention_mask: Tensor, layer: int, **kw: Any
) -> Tensor:
    """Logits of ``twin`` with ``resid`` entering decoder layer ``layer`` (right-padded rows,
    no cache; ``kw``: e.g. ``logits_to_keep``). The layer modules, and so their hooks, are the
    twin's own."""
    with only_layers(twin, layer):
        out = twin(inputs_embeds=resid, attention_mask=attention_mask, use_cache=False, **kw)
    return out.logits  # type: ignore[no-any-return]


def _shared_below(twin: Any) -> int | None:
    """The lowest decoder layer of ``twin`` that a hook acts at, read from the layers
    themselves (whoever registered it; transformers' own read-only capture hooks aside), or
    the last layer where none does; None where a prompt pass shared below it is not exact
    for this model (``prefill_exact``) or no layer is free of hooks."""
    layers = decoder_layers(twin)
    below = next(
        (
            i
            for i, m in enumerate(layers)
            if any(
                not _is_library_capture(fn)
                for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
            )
        ),
        len(layers) - 1,
    )
    return below if below > 0 and prefill_exact(twin, below) else None


def _starts_midway(twin: Any, layer: int) -> bool:
    """Whether a pass started at decoder layer ``layer`` from the captured residual gives the
    whole pass's logits, checked once per twin and layer on two right-padded rows. An
    architecture whose forward scales the input embeddings, or indexes per-layer settings
    by loop position (sliding-window layers, per-layer rope), does not; nor one that cannot
    take ``inputs_embeds``: those run whole."""
    seen = _MIDWAY.setdefault(twin, {})
    if layer in seen:
        return seen[layer]
    ok = len(set(getattr(twin.config, "layer_types", None) or ["one"])) == 1
    err = float("nan")
    if ok:
        vocab = int(twin.config.vocab_size)
        device = next(twin.parameters()).device
        ids = (torch.arange(1, 13, device=device) * 7919 % max(vocab - 1, 1)).view(2, 6)
        mask = torch.ones_like(ids)
        mask[1, 4:] = 0
        try:
            with torch.inference_mode():
                full = twin(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
                (resid,) = capture_residuals(twin, ids, mask, [layer], "hook_resid_pre")
                part = _upper_logits(twin, resid, mask, layer).float()
            real = mask.bool()
            err = float((full - part)[real].abs().max() / full[real].abs().max().clamp_min(1e-30))
        except Exception as e:  # an architecture that cannot start midway runs whole
            logger.info("partial passes off for %s: %s", type(twin).__name__, e)
        tol = 1e-3 if next(twin.parameters()).dtype in _PROBE_TOL else 1e-2
        ok = err < tol  # NaN (no probe) fails
        if not ok:
            logger.info(
                "partial passes off for %s at layer %d (relative error %.3g)",
                type(twin).__name__,
                layer,
                err,
            )
    seen[layer] = ok
    return ok


def _continued(
    twin: Any,
    run: Any,
    prefix_ids: Tensor,
    prefix_mask: Tensor,
    owner: Sequence[int],
    input_ids: Tensor,
    attention_mask: Tensor,
) -> Any:
    """``run(ids, mask, **kw)`` on the prefixes (filling a KV cache), then on the rows, each
    continuing the cache of its prefix ``prefix_ids[owner[row]]`` (right-padded: a shorter
    prefix's padding is masked, and its row's positions count on from its real length)."""
    device = input_ids.device
    cache = {_cache_kwarg(type(twin)): _new_cache()}
    run(prefix_ids, prefix_mask, use_cache=True, **cache)
    index = torch.as_tensor(list(owner), device=device)
    next(iter(cache.values())).batch_select_indices(index)  # each row its prefix's keys, values
    mask = torch.cat([prefix_mask[index], attention_mask], dim=1)
    start = prefix_mask.sum(1)[index]
    pos = start[:, None] + torch.arange(input_ids.shape[1], device=device)[None, :]
    return run(input_ids, mask, position_ids=pos, use_cache=True, **cache)


def _continued_logits(
    twin: Any,
    prefix_ids: Tensor,
    prefix_mask: Tensor,
    owner: Sequence[int],
    input_ids: Tensor,
    attention_mask: Tensor,
    keep: Sequence[int],
) -> Tensor:
    """The logits at ``keep`` (columns of ``input_ids``) of each row continuing the KV cache of
    its prefix (``_continued``); the prefixes' pass unembeds one position only."""
    device = input_ids.device

    def run(ids: Tensor, mask: Tensor, **kw: Any) -> Tensor:
        cols = keep if ids is input_ids else [0]
        out = twin(input_ids=ids, attention_mask=mask, **kw, **_keep_kwargs(twin, cols, device))
        return out.logits  # type: ignore[no-any-return]

    return _continued(  # type: ignore[no-any-return]
        twin, run, prefix_ids, prefix_mask, owner, input_ids, attention_mask
    )


_SHARES: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _shares_prefix(twin: Any) -> bool:
    """Whether rows continuing a shared prefix's KV cache give the whole passes' logits,
    checked once per twin on two right-padded prefixes of different lengths and three rows.
    An architecture whose cache cannot be indexed by rows, or whose positions are not the
    ones counted here, does not (nor one whose forward raises on it): those run whole."""
    if twin in _SHARES:
        return _SHARES[twin]
    window = _windowed(twin.config)
    if window is not None:  # a probe this short would not reach the window
        logger.info("shared prefixes off for %s: %s", type(twin).__name__, window)
        _SHARES[twin] = False
        return False
    vocab = int(twin.config.vocab_size)
    device = next(twin.parameters()).device
    tokens = (torch.arange(1, 19, device=device) * 7919 % max(vocab - 1, 1)).tolist()
    prefixes = [tokens[:5], tokens[5:8]]
    rows = [(0, tokens[8:11]), (0, tokens[11:13]), (1, tokens[13:17])]
    err = float("nan")
    try:
        with torch.inference_mode():
            pre_ids, pre_mask = _right_padded(prefixes, device)
            ids, mask = _right_padded([r for _, r in rows], device)
            width = ids.shape[1]
            got = _continued_logits(
                twin, pre_ids, pre_mask, [o for o, _ in rows], ids, mask, list(range(width))
            ).float()
            whole_ids, whole_mask = _right_padded([prefixes[o] + r for o, r in rows], device)
            full = twin(input_ids=whole_ids, attention_mask=whole_mask, use_cache=False).logits
            errs = []
            for k, (o, r) in enumerate(rows):
                p = len(prefixes[o])
                ref = full[k, p : p + len(r)].float()
                errs.append(float((got[k, : len(r)] - ref).abs().max() / ref.abs().max()))
            err = max(errs)
    except Exception as e:  # an architecture that cannot continue a cache this way runs whole
        logger.info("shared prefixes off for %s: %s", type(twin).__name__, e)
    tol = 1e-3 if next(twin.parameters()).dtype in _PROBE_TOL else 1e-2
    ok = err < tol  # NaN (no probe) fails
    if not ok:
        logger.info("shared prefixes off for %s (relative error %.3g)", type(twin).__name__, err)
    _SHARES[twin] = ok
    return ok


def _windowed(config: Any) -> str | None:
    """Why some attention layer of this config sees only a window (or chunk) of the past, or
    None. Its mask counts cache slots: the padding between a shorter prefix and its
    continuation would move keys out of the window, so such a model runs whole passes."""
    kinds = set(getattr(config, "layer_types", None) or []) - {"full_attention"}
    if kinds:
        return f"layer types {sorted(kinds)}"
    if getattr(config, "attention_chunk_size", None):
        return "chunked attention"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) is not False:
        return f"a sliding window of {window}"
    return None


def _right_padded(rows: Sequence[Sequence[int]], device: Any) -> tuple[Tensor, Tensor]:
    """Token rows right-padded with token 0, and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), device=device)
        mask[i, : len(r)] = 1
    return ids, mask


class _Stop(Exception):
    """Raised by the last capture hook: the layers above it are not needed."""


def capture_residuals(
    twin: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    layers: Sequence[int],
    hook: str,
    **forward_kwargs: Any,
) -> list[Tensor]:
    """``blocks.{l}.{hook}`` for each layer, read from the twin's decoder layers.

    Capture hooks are registered after any steering hooks, so they see the steered values.
    The forward pass stops after the last needed layer (and never reaches the unembedding);
    ``forward_kwargs`` go to the decoder's forward (a KV cache and its positions; default: no
    cache).
    """
    if hook not in FAST_HOOKS:
        raise ValueError(f"the fast path reads {FAST_HOOKS}, not {hook}")
    modules = decoder_layers(twin)
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
        kw = {"use_cache": False, **forward_kwargs}
        with suppress(_Stop):
            twin.model(input_ids=input_ids, attention_mask=attention_mask, **kw)
    finally:
        for h in handles:
            h.remove()
    return [captured[layer] for layer in layers]
