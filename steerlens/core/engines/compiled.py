"""The compiled decoding engine: a static KV cache, the decoding step compiled with
``torch.compile`` (replayed as a CUDA graph on a GPU), and the steering inside the step.

The eager fast path (``steerlens.core.engines.hf``) calls a Python hook on every steered layer
at every step, and its KV cache grows, so nothing can be captured once and replayed. This
engine runs the same plain HF model (bound to the same weights) differently:

* **Steering as data.** Every steering hook of the call (``sl.generate(steering=...)`` and
  open ``sl.steering()`` blocks) is an ``add_vector_hook``, whose ``spec`` says what it adds.
  Each becomes a *slot*: preallocated buffers for its per-row vectors ``[batch, d_model]``,
  per-row α ``[batch]`` and gate bounds, written in place before each batch. The hooks that
  read them are installed once, on a twin of the model's own, so a new user, vector, α or
  gate never recompiles.
* **Gates from a step counter.** The buffer ``base`` holds the position of the call's first
  token relative to the prompt's end (``-prompt_len`` for the prompt, ``i`` for decoding
  step ``i``); a gate is the mask ``lo <= arange(n_pos) + base < hi``. The eager hooks count
  positions in Python; both give the same mask.
* **Bounded shapes.** The batch is padded to a power of two (copies of its last row, with
  α 0 and a zero vector), the cache to a power of two >= prompt + new tokens (at least 64),
  so a sweep compiles a few graphs. Each (slots, batch bucket) has its own twin, buffers and
  compiled step, kept for the process: compilation is paid once (``engine_stats`` reports
  it) and amortised over every later call.
* **Conditions as a reader slot.** A ``Condition``'s reader hook becomes a slot that, while
  the prompt runs eagerly, decides each row and multiplies the α buffer of the slots it gates
  in place; in the compiled step it does nothing. A new condition never recompiles.
* **The prompt runs eagerly** through the same twin and buffers (its length varies); the
  one-token steps run compiled. On a GPU the compiled step is replayed as a CUDA graph
  (``mode="reduce-overhead"``).

``generate(engine="compiled")`` asks for it; ``engine="auto"`` takes it on CUDA when it is
exact (the same conditions as the fast path, and every steering hook is an
``add_vector_hook`` without ``prompt_lengths``). Where ``torch.compile`` cannot run (no C++
compiler for a CPU, no triton for CUDA, MPS, a Python dynamo does not support) it falls
back, with a logged notice, to the eager fast path; a step that fails to compile runs the
same static-cache step eagerly, as does a graph dynamo would recompile past its limit (both
counted in ``engine_stats().eager_fallbacks``). Before first use the static-cache step is
checked against a full forward pass (``steerlens.core.decoding``), as every decoding path is,
unsteered and *steered* (per-row vectors, α and gates in the buffers the compiled graph reads,
against the eager steering hooks), uncompiled and compiled. A static cache evicted and made again for a warm graph is counted in
``engine_stats().recaptures`` (on a GPU its CUDA graph is recorded again). A later ``steps()``
on a batch bucket owns its buffers: an earlier decoding on it is refused at its next step.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import time
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch._dynamo.exc import FailOnRecompileLimitHit, RecompileError, TorchDynamoException

from steerlens.core.decoding import DecodingError, Steps, _cache_kwarg, _check, _probe_ids
from steerlens.core.hooks import AddSpec, HookPair, ReadSpec

from ._binding import bind_twin, decoder_layers, hook_point
from .hf import HFEngine

__all__ = [
    "CompiledEngine",
    "CompiledSteps",
    "EngineStats",
    "bucket",
    "check_compiled_engine",
    "clear_caches",
    "compile_blocker",
    "compiled_steps",
    "engine_stats",
    "steering_specs",
]

logger = logging.getLogger(__name__)
MIN_CACHE = 64
"""The smallest cache length bucket."""
MAX_CACHES = 8
"""Static caches an engine keeps between calls (over all its batch buckets): the least
recently used is freed; ``CompiledSteps.clear()`` frees them all."""
RECOMPILE_ROOM = 64
"""dynamo's recompile limit while a runner compiles a new cache bucket (it counts graphs per
code object; each runner has its own, and holds one graph per cache bucket it has seen)."""
_ATTR = "_steerlens_compiled_engine"
_REFUSED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_LIVE: weakref.WeakSet[CompiledSteps] = weakref.WeakSet()
_COMPILE_ERRORS = (TorchDynamoException, FailOnRecompileLimitHit)
"""What ``torch.compile`` raises while compiling, before the step has run."""


def bucket(n: int, floor: int = 1) -> int:
    """The smallest power of two >= ``n`` and >= ``floor``."""
    return max(floor, 1 << max(n - 1, 0).bit_length())


def compile_blocker(device: torch.device, hf: Any = None) -> str | None:
    """Why ``torch.compile`` cannot compile the decoding step of ``hf`` on ``device``, or
    None: the platform (compiler, triton, device type) and the architecture."""
    import torch._dynamo

    if hf is not None:
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        try:
            layers = StaticCache(config=hf.config, max_cache_len=MIN_CACHE).layers
        except Exception as exc:  # a layer type transformers cannot make static
            return f"no static cache for {type(hf).__name__} ({type(exc).__name__}: {exc})"
        if any(getattr(layer, "is_sliding", False) for layer in layers):
            return (
                f"{type(hf).__name__} has sliding-window attention layers, whose static cache "
                "keeps its position as a Python int: the step would recompile every token"
            )
        odd = {type(layer).__name__ for layer in layers if type(layer) is not StaticLayer}
        if odd:
            return f"{type(hf).__name__}'s static cache has layers of kind {sorted(odd)}"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (torch.compile needs it on CUDA)"
        return None
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "")
        if not any(shutil.which(c) for c in (cxx, "c++", "g++", "clang++") if c):
            return "no C++ compiler found (torch.compile needs one on a CPU)"
        return None
    return f"the compiled engine runs on CPU and CUDA, not {device.type}"


@dataclass(frozen=True)
class _Slot:
    layer: int
    point: str
    read: bool = False
    """A condition's reader: at the prompt (run eagerly) it decides each row and scales the α
    of the slots it gates; in the compiled step it does nothing."""


Spec = AddSpec | ReadSpec


def steering_specs(pairs: Sequence[HookPair]) -> tuple[list[_Slot], list[Spec]] | str:
    """The slots and what they add (or read), or why these hooks cannot run as data."""
    slots: list[_Slot] = []
    specs: list[Spec] = []
    for name, fn in pairs:
        spec = getattr(fn, "spec", None)
        if not isinstance(spec, AddSpec | ReadSpec):
            return f"the hook on {name} is not a steerlens add_vector_hook"
        if isinstance(spec, AddSpec) and spec.prompt_lengths is not None:
            return "a steering hook has prompt_lengths (single-pass scoring, not decoding)"
        layer, point = hook_point(str(name))
        slots.append(_Slot(layer, point, isinstance(spec, ReadSpec)))
        specs.append(spec)
    return slots, specs


@dataclass
class EngineStats:
    """What the compiled engine did in this process."""

    graphs: int = 0
    """Graphs dynamo compiled for decoding steps (one per set of steered hook points x
    batch bucket x cache bucket, where nothing recompiles)."""
    warmup_s: float = 0.0
    """Seconds spent in the calls that compiled (a CUDA graph is recorded on a later call,
    not counted here)."""
    compiled_steps: int = 0
    """Decoding steps run by a compiled graph."""
    eager_steps: int = 0
    """Decoding steps run eagerly on the static cache (a graph that did not compile, or that
    dynamo would have run eagerly: see ``eager_fallbacks``)."""
    eager_fallbacks: int = 0
    """Graphs that fell back to eager: a compile error, or dynamo's recompile limit hit. Each
    such graph's later steps count in ``eager_steps``."""
    recaptures: int = 0
    """New static caches made for a graph already warm (its cache was evicted from the
    ``MAX_CACHES`` kept, or freed by ``clear()``): new tensors, so on a GPU the CUDA graph is
    recorded again."""
    notices: list[str] = field(default_factory=list)


_STATS = EngineStats()


def engine_stats() -> EngineStats:
    """The compiled engine's counters for this process (graphs, warm-up seconds, steps)."""
    return _STATS


class _SteerState(torch.nn.Module):
    """The buffers the compiled step reads: per slot, per-row vectors and α, gate bounds;
    and the step counter. Written in place, never reallocated."""

    vec: Tensor
    alpha: Tensor
    lo: Tensor
    hi: Tensor
    base: Tensor
    reader: Callable[[int, Tensor], None] | None
    """Set only while the prompt runs eagerly: what a condition's reader slot calls."""

    def __init__(self, n_slots: int, batch: int, d_model: int, device: torch.device) -> None:
        super().__init__()
        self.reader = None
        shapes = {
            "vec": (n_slots, batch, d_model),
            "alpha": (n_slots, batch),
            "lo": (n_slots,),
            "hi": (n_slots,),
            "base": (1,),
        }
        for name, shape in shapes.items():
            buf = torch.zeros(shape, dtype=torch.float32, device=device)
            torch._dynamo.mark_static_address(buf)  # a CUDA graph reads it where it is
            self.register_buffer(name, buf)

    def add(self, s: int, resid: Tensor) -> Tensor:
        """``resid`` + slot ``s``'s α · vector on the gated positions (float32 sum, cast once,
        as ``add_vector_hook`` computes it)."""
        off = torch.arange(resid.shape[1], device=resid.device, dtype=torch.float32) + self.base
        keep = ((off >= self.lo[s]) & (off < self.hi[s])).to(torch.float32).view(1, -1, 1)
        delta = self.alpha[s].view(-1, 1, 1) * self.vec[s].unsqueeze(1)
        return (resid.float() + delta * keep).to(resid.dtype)

    def read(self, s: int, resid: Tensor) -> None:
        """A reader slot: calls ``reader`` at the prompt; nothing in the compiled step."""
        if self.reader is not None:
            self.reader(s, resid)

    @torch.no_grad()
    def load(self, specs: Sequence[Spec], rows: int) -> None:
        """Write the specs for the first ``rows`` rows; the padding rows get α 0. A reader
        slot adds nothing; a conditioned slot's α is scaled at the prompt (``decide``)."""
        device = self.vec.device
        self.vec[:, rows:].zero_()
        self.alpha[:, rows:].zero_()
        for s, spec in enumerate(specs):
            if isinstance(spec, ReadSpec):
                continue
            v, a = spec.rows(rows, device)
            self.vec[s, :rows].copy_(v)
            self.alpha[s, :rows].copy_(a)
            self.lo[s] = spec.gate.start
            self.hi[s] = spec.gate.stop

    @torch.no_grad()
    def decide(self, specs: Sequence[Spec], s: int, resid: Tensor, rows: int) -> None:
        """Reader slot ``s`` at the prompt: decide the ``rows`` real rows and scale the α of
        every slot its condition gates (in place: the compiled step reads them there)."""
        spec = specs[s]
        assert isinstance(spec, ReadSpec)
        w = spec.state.decide(resid[:rows])
        for t, other in enumerate(specs):
            if isinstance(other, AddSpec) and other.condition is spec.state:
                self.alpha[t, :rows].mul_(w.to(self.alpha.device))


def _compile_room() -> dict[str, Any]:
    """dynamo's settings while a runner compiles a new cache bucket: room for the graph, and
    past the limit an error (caught, counted in ``eager_fallbacks``, run eagerly) rather than
    an eager run under the compiled name. With ``fullgraph=True`` torch 2.13 already raises
    there; the flag keeps it so for versions that do not (it excludes ``suppress_errors``)."""
    room: dict[str, Any] = {"recompile_limit": RECOMPILE_ROOM}
    if not torch._dynamo.config.suppress_errors:
        room["fail_on_recompile_limit_hit"] = True
    return room


def _slot_hooks(
    twin: Any,
    slots: Sequence[_Slot],
    add: Callable[[int, Tensor], Tensor],
    read: Callable[[int, Tensor], None] | None = None,
) -> list[Any]:
    """Install one hook per slot on the twin's decoder layers: slot ``s`` replaces the
    residual by ``add(s, resid)`` (a reader slot calls ``read(s, resid)`` and changes
    nothing). Returns the handles. The engine's stay for the twin's life (it is the runner's
    own, nothing else runs it, and compiled graphs are traced with them); the first-use
    check's reference removes its own."""
    layers = decoder_layers(twin)
    handles = []
    for s, slot in enumerate(slots):
        if slot.read:
            assert read is not None
            handles.append(_read_hook(layers[slot.layer], slot.point, read, s))
        elif slot.point == "hook_resid_post":

            def post(module: Any, args: Any, output: Any, s: int = s) -> Any:
                if isinstance(output, tuple):
                    return (add(s, output[0]), *output[1:])
                return add(s, output)

            handles.append(layers[slot.layer].register_forward_hook(post))
        else:

            def pre(module: Any, args: Any, kwargs: Any, s: int = s) -> Any:
                if args:
                    return (add(s, args[0]), *args[1:]), kwargs
                kwargs["hidden_states"] = add(s, kwargs["hidden_states"])
                return args, kwargs

            handles.append(layers[slot.layer].register_forward_pre_hook(pre, with_kwargs=True))
    return handles


def _read_hook(layer: Any, point: str, read: Callable[[int, Tensor], None], s: int) -> Any:
    """A hook on ``layer`` calling ``read(s, resid)`` at ``point``; it returns nothing, so the
    residual is unchanged."""
    if point == "hook_resid_post":

        def post(module: Any, args: Any, output: Any) -> None:
            read(s, output[0] if isinstance(output, tuple) else output)

        return layer.register_forward_hook(post)

    def pre(module: Any, args: Any, kwargs: Any) -> None:
        read(s, args[0] if args else kwargs["hidden_states"])

    return layer.register_forward_pre_hook(pre, with_kwargs=True)


@contextmanager
def _grad_off() -> Iterator[None]:
    """``no_grad`` outside inference mode, whatever the caller runs under: the engine's
    caches and buffers stay ordinary tensors that any later call may update in place, and
    compiled graphs and CUDA graphs are captured as transformers' own static-cache
    generation captures them (under ``no_grad``)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own: dynamo keeps compiled graphs (and counts them
    against its recompile limit) per code object, so each runner looks up only its own."""
    assert isinstance(fn, types.FunctionType)
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


class _Runner:
    """One (slots, batch bucket): a twin with the slot hooks, their buffers, and the compiled
    step (one graph per cache-length bucket, under a code object of its own)."""

    def __init__(self, engine: CompiledSteps, slots: Sequence[_Slot], batch: int) -> None:
        self.engine = engine
        self.batch = batch
        self.twin = bind_twin(engine.hf)
        d_model = int(self.twin.config.hidden_size)
        self.state = _SteerState(len(slots), batch, d_model, engine.device)
        _slot_hooks(self.twin, slots, self.state.add, self.state.read)
        self.warm: set[int] = set()  # cache lengths whose graph ran
        self.broken: set[int] = set()  # cache lengths whose graph did not compile
        self.owner = 0  # the latest steps() on this runner: its buffers and caches are its
        twin, kwarg = self.twin, engine.cache_kwarg

        def forward(ids: Tensor, mask: Tensor, pos: Tensor, cache: Any) -> Tensor:
            out = twin(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **{kwarg: cache},
            )
            return out.logits[:, -1]

        self.eager = forward
        self.compiled: Callable[..., Tensor] | None = (
            torch.compile(_own_code(forward), fullgraph=True, dynamic=False, mode=engine.mode)
            if engine.compile
            else None
        )

    def cache(self, length: int) -> Any:
        """A static cache of ``length`` positions, emptied; the engine keeps the
        ``MAX_CACHES`` most recently used of all its runners' and frees the rest."""
        caches = self.engine.caches
        cache = caches.pop((self, length), None)
        if cache is None:
            from transformers import StaticCache

            cache = StaticCache(config=self.twin.config, max_cache_len=length)
            if length in self.warm and length not in self.broken:  # a graph warm on others
                _STATS.recaptures += 1
        elif cache.layers[0].is_initialized:
            cache.reset()  # in place: the compiled step's static addresses stay
        caches[(self, length)] = cache
        while len(caches) > MAX_CACHES:
            caches.popitem(last=False)
        return cache

    def decode(self, length: int, *args: Any) -> Tensor:
        """One decoding step: the compiled graph of this cache length, or (where it did not
        compile) the same step eagerly. Compilation is counted from dynamo's own counter, so
        any recompile shows in ``engine_stats().graphs``."""
        if self.compiled is not None and length not in self.broken:
            from torch._dynamo.utils import counters

            before = counters["stats"]["unique_graphs"]
            t0 = time.perf_counter()
            try:
                if self.engine.device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()
                if length in self.warm:
                    out = self.compiled(*args)
                else:  # a compile can happen: room for it, and past the limit an error
                    with torch._dynamo.config.patch(**_compile_room()):
                        out = self.compiled(*args)
            except _COMPILE_ERRORS as exc:  # raised while compiling, before the step ran
                if isinstance(exc, RecompileError):  # error_on_recompile: a caller's check
                    raise
                note = (
                    f"the decoding step (batch {self.batch}, cache {length}) did not compile "
                    f"({type(exc).__name__}: {exc}); it runs eagerly"
                )
                logger.warning("compiled engine: %s", note)
                _STATS.notices.append(note)
                _STATS.eager_fallbacks += 1
                self.broken.add(length)
            else:
                self.warm.add(length)
                new = counters["stats"]["unique_graphs"] - before
                if new:
                    _STATS.graphs += new
                    _STATS.warmup_s += time.perf_counter() - t0
                    logger.info(
                        "compiled engine: batch %d x cache %d compiled in %.1f s",
                        self.batch,
                        length,
                        time.perf_counter() - t0,
                    )
                _STATS.compiled_steps += 1
                return out
        if self.engine.compile:
            _STATS.eager_steps += 1
        return self.eager(*args)


class CompiledSteps:
    """The compiled decoding steps of one plain HF model: its runners (twin, buffers,
    compiled step per slots and batch bucket) and static caches (see the module docstring)."""

    def __init__(self, hf: Any, *, compile: bool = True) -> None:
        self.hf = hf  # the engine is kept on the model itself (a cycle the GC frees with it)
        self.compile = compile
        param = next(hf.parameters())
        self.device = param.device
        self.mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.cache_kwarg = _cache_kwarg(type(hf))
        self.runners: dict[tuple[tuple[_Slot, ...], int], _Runner] = {}
        self.caches: OrderedDict[tuple[_Runner, int], Any] = OrderedDict()

    def clear(self) -> None:
        """Free the static caches kept between calls (the compiled graphs stay)."""
        self.caches.clear()

    @_grad_off()
    def steps(
        self,
        specs_of: tuple[Sequence[_Slot], Sequence[Spec]],
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int,
    ) -> Steps:
        """A decoding step function (``steerlens.core.decoding.Steps``) for this batch:
        ``step(None)`` runs the prompt, ``step(next_ids)`` one token, each the last
        position's logits ``[batch, vocab]``."""
        slots, specs = specs_of
        rows, prompt_len = input_ids.shape
        size = bucket(rows)
        key = (tuple(slots), size)
        runner = self.runners.get(key)
        if runner is None:
            runner = self.runners[key] = _Runner(self, slots, size)
        length = bucket(prompt_len + max_new_tokens, MIN_CACHE)
        runner.owner += 1
        me = runner.owner
        runner.state.load(specs, rows)
        cache = runner.cache(length)
        pad = size - rows
        ids = torch.cat([input_ids, input_ids[-1:].expand(pad, -1)])
        mask = torch.cat([attention_mask, attention_mask[-1:].expand(pad, -1)])
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        # Left padding is the only masked part; later positions are masked by causality.
        full_mask = torch.cat([mask, mask.new_ones(size, length - prompt_len)], dim=1)
        last_pos = pos[:, -1:]
        done = 0  # decoding steps run
        copy_out = self.device.type == "cuda"  # a CUDA graph's output is overwritten next step

        @_grad_off()
        def step(nxt: Tensor | None) -> Tensor:
            nonlocal last_pos, done
            if runner.owner != me:  # a later steps() on this bucket rewrote the buffers
                raise RuntimeError(
                    f"this decoding (batch bucket {size}) was superseded: a later steps() on "
                    "the same bucket owns its buffers and caches now; finish one decoding "
                    "before starting the next on the same engine"
                )
            if nxt is None:
                runner.state.base.fill_(-prompt_len)
                state = runner.state
                if any(slot.read for slot in slots):  # conditions decide at the prompt
                    state.reader = functools.partial(_decide_slot, state, specs, rows)
                try:
                    out = runner.eager(ids, full_mask, pos, cache)
                finally:
                    state.reader = None
            else:
                if prompt_len + done >= length:
                    raise ValueError(f"the static cache holds {length} positions")
                runner.state.base.fill_(done)
                last_pos = last_pos + 1
                nxt = torch.cat([nxt, nxt[-1:].expand(pad)])[:, None]
                out = runner.decode(length, nxt, full_mask, last_pos, cache)
                done += 1
            return out[:rows].clone() if copy_out else out[:rows]

        return step


def _decide_slot(
    state: _SteerState, specs: Sequence[Spec], rows: int, s: int, resid: Tensor
) -> None:
    state.decide(specs, s, resid, rows)


def compiled_steps(hf: Any) -> CompiledSteps:
    """The compiled engine of a plain HF model (built once, checked, kept while it lives).

    Raises ``DecodingError`` when its static-cache step does not reproduce a full forward
    with the installed versions.
    """
    engine = hf.__dict__.get(_ATTR)
    if engine is None:
        engine = CompiledSteps(hf)
        why = _REFUSED.get(hf) or check_compiled_engine(hf, engine)
        if why is not None:
            _REFUSED[hf] = why
            raise DecodingError(why)
        hf.__dict__[_ATTR] = engine
        _LIVE.add(engine)
    return engine


def clear_caches() -> None:
    """Free the static KV caches every compiled engine keeps between calls (their compiled
    graphs stay; the next call allocates a cache again)."""
    for engine in list(_LIVE):
        engine.clear()


@dataclass(frozen=True)
class _SteeredProbe:
    """What the first-use check steers: two slots (a ``resid_post`` gated to the prompt and
    the first generated token, so on in the compiled step; a ``resid_pre`` gated to the
    prompt, so off there: the graph must read the gate), a vector and an α per row (one row
    with α 0), written into the engine's buffers as any call's are."""

    slots: list[_Slot]
    specs: list[AddSpec]

    @classmethod
    def make(cls, hf: Any, rows: int) -> _SteeredProbe:
        from steerlens.core.hooks import FirstK, Gate

        n_layers, d_model = len(decoder_layers(hf)), int(hf.config.hidden_size)
        g = torch.Generator().manual_seed(0)
        device = next(hf.parameters()).device
        alphas = torch.tensor([1.0, -2.0, 0.0, 0.5][:rows] + [1.0] * max(0, rows - 4))
        slots = [_Slot(min(1, n_layers - 1), "hook_resid_post"), _Slot(0, "hook_resid_pre")]
        gates = [Gate.parse(FirstK(1)), Gate.parse("prefill")]
        # random directions at the scale of the residual stream's input (the embedding rows'
        # mean norm), so that α 1-2 moves the logits far beyond the check's tolerance without
        # driving a large model into a numerically extreme regime
        emb = hf.get_input_embeddings().weight[:1024].detach().float()
        scale = emb.norm(dim=-1).mean().cpu()

        def directions() -> Tensor:
            v = torch.randn(rows, d_model, generator=g)
            return (v / v.norm(dim=-1, keepdim=True) * scale).to(device)

        specs = [AddSpec(directions(), alphas.to(device), gate, None) for gate in gates]
        return cls(slots, specs)

    def steps(self, engine: CompiledSteps, ids: Tensor, mask: Tensor) -> Steps:
        return engine.steps((self.slots, self.specs), ids, mask, 1)

    def reference(self, hf: Any, ids: Tensor, row: int) -> Tensor:
        """Row ``row``'s full forward with the eager steering hooks (``add_vector_hook``, as
        the eager fast path runs them): its last token is the generated one."""
        from steerlens.core.hooks import add_vector_hook

        prompt = [ids.shape[1] - 1]
        fns = [
            add_vector_hook(s.direction[row], float(s.alpha[row]), s.gate, prompt_lengths=prompt)  # type: ignore[index]
            for s in self.specs
        ]

        def add(s: int, resid: Tensor) -> Tensor:
            out = fns[s](resid, hook=None)
            assert out is not None  # an add_vector_hook always returns the new residual
            return out

        handles = _slot_hooks(hf, self.slots, add)
        try:
            return hf(input_ids=ids).logits
        finally:
            for h in handles:
                h.remove()


def _unsteered_steps(engine: CompiledSteps, ids: Tensor, mask: Tensor) -> Steps:
    return engine.steps(([], []), ids, mask, 1)


def check_compiled_engine(hf: Any, engine: CompiledSteps | None = None) -> str | None:
    """The cached-step check (``steerlens.core.decoding``) on this engine's steps, uncompiled
    and compiled: three rows (one left-padded) padded to a batch of four, the positions, the
    mask and the static cache; the compiled step three times, so that on a GPU its CUDA graph
    is recorded and replayed (``engine``'s, whose graph is then kept). Then the same for a
    *steered* step (``_SteeredProbe``: per-row vectors and α, two gates, both hook points,
    in the buffers the compiled graph reads) against the eager steering hooks on a full
    forward. None when every run reproduces its reference."""
    param = next(hf.parameters())
    ids, mask, rows = _probe_ids(int(hf.config.vocab_size), param.device)
    probe = (torch.cat([ids, ids[:1]]), torch.cat([mask, mask[:1]]), [*rows, rows[0]])
    compiled = engine or CompiledSteps(hf)
    uncompiled = CompiledSteps(hf, compile=False)
    steered = _SteeredProbe.make(hf, len(probe[2]))
    # three compiled runs: on a GPU the first call of a graph warms up, the second records
    # the CUDA graph and the third replays it
    runs = [("uncompiled", uncompiled)] + [
        (f"compiled, {when}", compiled) for when in ("first call", "recorded", "replayed")
    ]
    for what, run in runs:
        why = _check(
            f"compiled engine (static KV cache, {what})",
            functools.partial(_unsteered_steps, run),
            lambda ids, row: hf(input_ids=ids).logits,
            probe,
            param.dtype,
        )
        if why is not None:
            return why
    for what, run in runs:
        why = _check(
            f"compiled engine (steered step, {what})",
            functools.partial(steered.steps, run),
            functools.partial(steered.reference, hf),
            probe,
            param.dtype,
        )
        if why is not None:
            return why
    return None


class CompiledEngine(HFEngine):
    """The fast path whose decoding runs the compiled static-cache step, the call's steering
    (``slots``: the carried ``steering()`` blocks, then the call's own hooks) held as data in
    it. Its one-pass methods (``forward``, ``capture``) and ``hooks`` are the eager fast
    path's: they act on ``twin``, which the compiled steps never run (each runner decodes on
    its own twin of the same weights), so the steering is applied once either way."""

    name = "compiled"

    def __init__(
        self,
        fast: HFEngine,
        graphs: CompiledSteps,
        slots: tuple[list[_Slot], list[Spec]],
    ) -> None:
        super().__init__(fast.model, fast.twin, fast.bound, fast.carried)
        self.graphs = graphs
        self.slots = slots

    def steps(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int) -> Steps:
        return self.graphs.steps(self.slots, input_ids, attention_mask, max_new_tokens)
