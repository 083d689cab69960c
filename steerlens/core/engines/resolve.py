"""Which engine runs a call: ``resolve_engine`` validates ``engine=`` and returns an ``Engine``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from steerlens.core.decoding import DecodingError, tl_refusal
from steerlens.core.hooks import HookPair, active_steering
from steerlens.core.models import HookedModel, is_bridge, model_device

from . import hf
from ._binding import FAST_HOOKS
from .base import Engine
from .hf import HFEngine
from .names import ENGINES, PASS_ENGINES
from .tl import TLEngine

__all__ = ["auto_compiles", "resolve_engine"]

logger = logging.getLogger(__name__)


def resolve_engine(
    model: HookedModel,
    hook: str,
    engine: str,
    *,
    decoding: bool = False,
    pairs: Sequence[HookPair] = (),
) -> Engine:
    """The engine to run on (validates ``engine``).

    ``"tl"``: the TransformerLens path; ``"hf"``: the fast path (a ``ValueError`` where hooks
    on the model would not fire there); ``"auto"``: the fast path where it is exact
    (``fast_path_blocker``), else TL. ``decoding=True`` (generation) also honours the
    cached-step guard (``steerlens.core.decoding``): a TL path refused for decoding raises
    ``DecodingError`` where it would run, and ``"auto"`` routes around a refused fast path
    with a logged notice. Generation may also ask for ``"compiled"``
    (``steerlens.core.engines.compiled``), which ``"auto"`` takes on CUDA; ``pairs`` are the
    call's own steering hooks, which it runs as data (a pair at a point the fast path cannot
    reach takes the place of ``hook``).
    """
    # a pair at a point the fast path cannot reach (e.g. a condition or a vector at
    # hook_resid_mid) decides, whatever ``hook`` the caller named
    hook = next(
        (h for h in (str(n).rsplit(".", 1)[-1] for n, _ in pairs) if h not in FAST_HOOKS), hook
    )
    if engine not in ENGINES or (engine == "compiled" and not decoding):
        allowed = ENGINES if decoding else PASS_ENGINES
        raise ValueError(f"engine must be one of {', '.join(map(repr, allowed))}, got {engine!r}")
    if engine == "tl":
        _tl_may_decode(model, decoding, "engine='tl' was asked for")
        return TLEngine(model)
    if engine == "auto":
        blocker = hf.fast_path_blocker(model, hook)
        if blocker is not None:
            _tl_may_decode(model, decoding, f"the fast path cannot run here: {blocker}")
            return TLEngine(model)
        try:
            twin = hf.hf_twin(model)
        except Exception as exc:  # any reason the fast path cannot be built: TL path
            reason = hf.refuse_fast_path(model, f"the fast path could not be built: {exc}")
            _tl_may_decode(model, decoding, reason)
            logger.warning("engine='auto' takes the TransformerLens path: %s", reason)
            return TLEngine(model)
        fast = HFEngine(model, twin, True, active_steering(model))
        if decoding and auto_compiles(model):
            return _with_compiled(fast, pairs, explicit=False)
        return fast
    if hook not in FAST_HOOKS:
        raise ValueError(f"engine={engine!r} works on {FAST_HOOKS}, not {hook}")
    why = hf.foreign_hooks(model)
    if why is not None:
        raise ValueError(
            f"engine={engine!r} cannot run here: {why}; they would not fire on the fast path. "
            "Use engine='tl' (or 'auto', which picks it)."
        )
    fast = HFEngine(model, hf.hf_twin(model), is_bridge(model), active_steering(model))
    if engine == "compiled":
        return _with_compiled(fast, pairs, explicit=True)
    return fast


def auto_compiles(model: HookedModel) -> bool:
    """Whether ``engine="auto"`` decodes with the compiled engine: on CUDA, where replaying
    the step as a CUDA graph removes the per-kernel launch cost that dominates decoding. On
    a CPU the eager fast path stays the default (compiling costs seconds a graph)."""
    return model_device(model).type == "cuda"


def _with_compiled(fast: HFEngine, pairs: Sequence[HookPair], *, explicit: bool) -> HFEngine:
    """The compiled engine where it can run, else ``fast``. Asked for explicitly, steering it
    cannot hold is a ``ValueError`` and a failed cached-step check a ``DecodingError``; where
    ``torch.compile`` is not available (and for ``"auto"``, always) a notice is logged and the
    eager fast path runs."""
    from . import compiled  # torch._dynamo: imported only where a compile may happen

    slots = compiled.steering_specs([*fast.carried, *pairs])
    if isinstance(slots, str):
        if explicit:
            raise ValueError(f"engine='compiled' cannot run here: {slots}; use engine='hf'")
        logger.info("the compiled engine is not used, the eager fast path runs: %s", slots)
        return fast
    why = compiled.compile_blocker(next(fast.twin.parameters()).device, fast.twin)
    if why is None:
        try:
            graphs = compiled.compiled_steps(fast.twin)
            return compiled.CompiledEngine(fast, graphs, slots)
        except DecodingError as exc:  # asked for, it is an error, as on every path
            if explicit:
                raise
            why = str(exc)
    (logger.warning if explicit else logger.info)(
        "the compiled engine is not used, the eager fast path runs: %s", why
    )
    return fast


def _tl_may_decode(model: HookedModel, decoding: bool, why_tl: str) -> None:
    refused = tl_refusal(model) if decoding else None
    if refused is not None:
        raise DecodingError(f"{refused} The TransformerLens path was needed because {why_tl}.")
