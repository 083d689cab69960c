"""Loading hooked models: the embedded default, ``"tiny-random"``, or any HF / TL name.

Two model classes share one hook API (``HookPoint`` names, ``cfg``, ``hooks()``):

* ``backend="bridge"`` (default): a TransformerLens ``TransformerBridge`` around the HF model,
  with ``enable_compatibility_mode()`` so hook names and numerics are the HookedTransformer
  ones. ``transformers`` ``generate`` on it fires TransformerLens hooks.
* ``backend="hooked"``: a genuine ``HookedTransformer`` (official TL names, or any
  Llama-architecture HF model including the embedded and tiny ones).

Every steerlens function accepts either.

**Weight processing.** Both classes by default apply TransformerLens' load-time processing
(norm weights folded into the next linear layers, centred unembedding, and for LayerNorm
models centred writing weights), so hook values are in HookedTransformer's coordinates.
TransformerLens processes a bridge's weights where they live, in float32, cloning the whole
state dict at each step: about five times the weights on the device at boot (a
Llama-3.1-8B-shaped model in bf16 ran out of memory on an 80 GB H100). For RMSNorm models
(Llama, Mistral, Qwen2, SmolLM ...) the folding changes neither the residual stream nor the
logits (it moves the norm's scale into the next weights), and centring the unembedding only
shifts each position's logits by one constant. ``weight_processing="auto"`` therefore does
the ``"light"`` processing for a bridge of an RMSNorm model on an accelerator: the
unembedding alone is centred, in place (untied from the embedding first when the two are
tied). The residual stream, the log-probs and the raw logits are then those of the full
processing; only the norms' own hooks (``ln*.hook_normalized``) and the weights' layout
differ. Hook names and aliases are the same in every mode.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
from transformer_lens.model_bridge import TransformerBridge

from steerlens.core import _tl
from steerlens.core._embedded import EMBEDDED_NAME, load_embedded_hf
from steerlens.core._tiny import TINY_NAME, tiny_hf_model
from steerlens.core.decoding import DecodingError, adapt_bridge_cache, check_tl_path, refuse_tl

logger = logging.getLogger(__name__)

# Either model class; on TransformerLens 4 (no HookedTransformer) the bridge alone.
if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    HookedModel: TypeAlias = HookedTransformer | TransformerBridge
elif _tl.has_hooked_transformer():
    HookedModel = _tl.hooked_transformer_class() | TransformerBridge
else:
    HookedModel = TransformerBridge
Backend = Literal["bridge", "hooked"]
WeightProcessing = Literal["auto", "full", "light", "none"]
Processing = Literal["full", "light", "none"]
_RMS = ("RMS", "RMSPre")

DEFAULT_MODEL = EMBEDDED_NAME
# The research steers layers 16-22 of Llama-3.1-8B's 32; other models use the same depth.
_RESEARCH_LAYERS = (16, 22, 32)


@dataclass(frozen=True)
class LoadSpec:
    """How a model was loaded, so a plain HF copy (the generation fast path) can be made."""

    name: str
    seed: int
    dtype: torch.dtype
    device: str | None
    fingerprint: torch.Tensor | None  # weight_fingerprint at load (HookedTransformer only)
    weight_processing: Processing = "full"  # what "auto" resolved to


def weight_fingerprint(model: Any) -> torch.Tensor:
    """Per-parameter sums (on CPU): they change when weights are edited (ablations, patches,
    training), so a copy made from the loaded weights can be checked against the model."""
    with torch.no_grad():
        return torch.stack([p.detach().float().sum().cpu() for p in model.parameters()])


_SPECS: weakref.WeakKeyDictionary[Any, LoadSpec] = weakref.WeakKeyDictionary()


def load_spec(model: HookedModel) -> LoadSpec | None:
    return _SPECS.get(model)


# The model's own HF tokenizer, as loaded: TransformerLens' copy (``model.tokenizer``) is set to
# prepend BOS to raw text where the model's tokenizer does not (SmolLM2, Qwen ...), so raw text
# is encoded with this one, as transformers and lm-evaluation-harness encode it.
_OWN_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def own_tokenizer(model: HookedModel) -> Any:
    """The model's own tokenizer (its special-token rule for raw text); TransformerLens'
    ``model.tokenizer`` for a model that steerlens did not load."""
    return _OWN_TOKENIZERS.get(model, model.tokenizer)


def _own_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:  # no tokenizer files: TransformerLens' copy is used
        logger.warning(
            "no tokenizer of its own for %s (%s); raw text follows TransformerLens'", name, e
        )
        return None


__all__ = [
    "DEFAULT_MODEL",
    "HookedModel",
    "WeightProcessing",
    "default_layers",
    "frozen_weights",
    "load_model",
    "model_device",
    "model_name",
    "own_tokenizer",
]


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        resolved = getattr(torch, dtype)
    except AttributeError:
        resolved = None
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    return resolved


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    backend: Backend = "bridge",
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    seed: int = 0,
    weight_processing: WeightProcessing = "auto",
) -> HookedModel:
    """Load a hooked model.

    Args:
        name: ``"smollm2-135m-instruct"`` (embedded, offline), ``"tiny-random"`` (seeded random
            Llama-shaped model for tests), or any HF / TransformerLens model name, e.g.
            ``"meta-llama/Llama-3.1-8B-Instruct"`` (needs the weights or network).
        backend: ``"bridge"`` (TransformerBridge in compatibility mode) or ``"hooked"``
            (HookedTransformer; TransformerLens 3.x only: on 4.x it raises
            ``HookedUnavailableError`` naming the installed version).
        device: defaults to CUDA when available, else CPU. Mutually exclusive with ``device_map``.
        dtype: defaults to bfloat16 on CUDA and float32 on CPU. The tiny model is always float32
            unless a dtype is given.
        device_map: HF-style device map for models larger than one GPU (bridge only).
        seed: the random init seed of ``"tiny-random"``.
        weight_processing: ``"full"``: TransformerLens' load-time processing (hook values in
            HookedTransformer's coordinates); ``"light"``: only the unembedding centred (for
            RMSNorm models the same residual stream and logits as ``"full"``); ``"none"``: the
            HF weights as they are; ``"auto"`` (default): ``"full"``, except ``"light"`` for a
            bridge of an RMSNorm model on an accelerator, where the full processing would
            hold about five times the weights on the device (module docstring).
    """
    if backend not in ("bridge", "hooked"):
        raise ValueError(f"backend must be 'bridge' or 'hooked', got {backend!r}")
    if weight_processing not in ("auto", "full", "light", "none"):
        raise ValueError(
            "weight_processing must be 'auto', 'full', 'light' or 'none', "
            f"got {weight_processing!r}"
        )
    if device is not None and device_map is not None:
        raise ValueError("pass either device or device_map, not both")
    if backend == "hooked":
        _tl.hooked_transformer_class()  # TransformerLens 4: a clear error before any loading
    dev = device or _default_device()
    accel = _on_accelerator(None if device_map else dev, device_map)
    resolved = _resolve_dtype(dtype or (torch.float32 if name == TINY_NAME else None), dev)
    model: HookedModel
    own_tok: Any = None
    if name in (TINY_NAME, EMBEDDED_NAME):
        hf, tok = (
            tiny_hf_model(seed=seed, dtype=resolved)
            if name == TINY_NAME
            else load_embedded_hf(dtype=resolved)
        )
        model = (
            _hooked_from_llama(hf, tok, name, dev, weight_processing)
            if backend == "hooked"
            else _bridge_from_hf(
                hf, tok, name, None if device_map else dev, weight_processing, accel
            )
        )
        own_tok = tok
    else:
        if backend == "hooked" and _is_official(name):
            name = _official(name)  # TL aliases ("llama-3.1-8b-instruct") -> the hub name
        model = _load_named(name, backend, dev, resolved, device_map, weight_processing, accel)
        own_tok = _own_tokenizer(name)
    _OWN_TOKENIZERS[model] = own_tok if own_tok is not None else model.tokenizer
    # One name on both classes (TransformerLens shortens official names), so a vector built
    # on one backend validates on the other.
    model.cfg.model_name = name
    # A HookedTransformer's fast path is a copy made from the source: record the weights it
    # must match. A bridge's fast path shares the weights and needs no such check.
    fingerprint = weight_fingerprint(model) if backend == "hooked" else None
    _SPECS[model] = LoadSpec(
        name,
        seed,
        resolved,
        None if device_map else dev,
        fingerprint,
        model._steerlens_processing,  # type: ignore[arg-type]
    )
    _release_freed_memory()
    _guard_decoding(model)
    return model


def _guard_decoding(model: HookedModel) -> None:
    """Check the model's TransformerLens path before anything runs on it
    (``steerlens.core.decoding``). Wrong hook points raise ``HookPointError`` on either class
    (every engine steers through those names). A failed cached step raises
    ``DecodingError`` for a HookedTransformer (it has no other path); a bridge's TL path is
    refused for decoding only (its fast path, checked when it is bound, may still decode)."""
    why = check_tl_path(model)
    if why is None:
        return
    if not is_bridge(model):
        raise DecodingError(why)
    refuse_tl(model, why)
    logger.warning("%s Generation takes the fast path where it can, and refuses otherwise.", why)


def is_bridge(model: HookedModel) -> bool:
    """Whether ``model`` is a ``TransformerBridge`` (it wraps an HF model in place)."""
    return getattr(model, "original_model", None) is not None


def _release_freed_memory() -> None:
    """Hand the memory freed while booting (weight processing makes temporary copies) back to
    the system: without it the process keeps about twice the weights resident on CPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to do
        pass


def _on_accelerator(device: str | None, device_map: str | dict[str, Any] | None) -> bool:
    if device_map is not None:
        targets = (
            set(map(str, device_map.values())) if isinstance(device_map, dict) else {device_map}
        )
        return bool(targets - {"cpu", "disk"})
    return device is not None and not device.startswith("cpu")


def _resolve_processing(
    processing: WeightProcessing, bridge: bool, norm: str | None, on_accelerator: bool
) -> Processing:
    if processing != "auto":
        return processing
    return "light" if bridge and on_accelerator and norm in _RMS else "full"


def _softcapped(cfg: Any) -> bool:
    """Logit soft-capping (Gemma-2's tanh) is not shift-invariant: no centring there."""
    cap = getattr(cfg, "output_logits_soft_cap", None)
    return cap is not None and float(cap) > 0


def _centre_unembedding(hf: Any) -> bool:
    """Centre the output embedding over the vocabulary, in place (each position's logits
    shift by one constant); untie it from the input embedding first when they are tied.
    Returns False (and changes nothing) when the weight is not in memory (offloaded)."""
    head = hf.get_output_embeddings()
    if head is None or head.weight.is_meta:
        return False
    tied = head.weight is hf.get_input_embeddings().weight
    with torch.no_grad():
        w = head.weight.detach().clone() if tied else head.weight
        # the mean over the vocabulary in float32, a block of rows at a time: no float32
        # copy of the whole matrix (2 GB for Llama-3's 128k x 4096) on the device
        total = torch.zeros(w.shape[1], dtype=torch.float32, device=w.device)
        for rows in w.split(8192):
            total += rows.float().sum(0)
        w.sub_((total / w.shape[0]).to(w.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.sub_(head.bias.float().mean().to(head.bias.dtype))
    if tied:
        head.weight = torch.nn.Parameter(w, requires_grad=head.weight.requires_grad)
        hf.config.tie_word_embeddings = False  # a later tie_weights() must not undo it
    return True


def _compatibility_mode(
    bridge: TransformerBridge, name: str, processing: WeightProcessing, on_accelerator: bool
) -> TransformerBridge:
    """HookedTransformer hook names and aliases, with the full, light or no processing."""
    mode = _resolve_processing(
        processing, True, getattr(bridge.cfg, "normalization_type", None), on_accelerator
    )
    if mode == "light" and _softcapped(bridge.cfg):
        mode = "none"
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=mode != "full")
    if mode == "light" and not _centre_unembedding(bridge.original_model):
        mode = "none"
    bridge.cfg.model_name = name
    bridge._steerlens_processing = mode  # type: ignore[assignment]
    adapt_bridge_cache(bridge)
    return bridge.eval()


def _bridge_from_hf(
    hf: Any,
    tok: Any,
    name: str,
    device: str | None,
    processing: WeightProcessing,
    on_accelerator: bool,
) -> TransformerBridge:
    if device is not None:
        hf = hf.to(device)
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
    return _compatibility_mode(bridge, name, processing, on_accelerator)


def _load_named(
    name: str,
    backend: Backend,
    device: str,
    dtype: torch.dtype,
    device_map: str | dict[str, Any] | None,
    processing: WeightProcessing = "auto",
    on_accelerator: bool = False,
) -> HookedModel:
    if backend == "hooked":
        if device_map is not None:
            raise ValueError("device_map is only supported with backend='bridge'")
        mode = "full" if processing == "auto" else processing
        if _is_official(name):
            full, light = mode == "full", mode != "none"
            hooked = (
                _tl.hooked_transformer_class()
                .from_pretrained(
                    name,
                    device=device,
                    dtype=dtype,
                    fold_ln=full,
                    center_writing_weights=full,
                    center_unembed=light,
                    fold_value_biases=full,
                    refactor_factored_attn_matrices=False,
                )
                .eval()
            )
            if mode == "light" and _softcapped(hooked.cfg):
                mode = "none"  # TransformerLens leaves a soft-capped unembedding uncentred
            hooked._steerlens_processing = mode  # type: ignore[assignment]
            return hooked
        # A local folder or a non-official name: build from the HF model (Llama family),
        # checked against it on the CPU (no second copy on the device), then moved.
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        _check_plain_llama(hf.config, name)
        model = _hooked_from_llama(hf, AutoTokenizer.from_pretrained(name), name, "cpu", mode)
        _check_conversion(model, hf, name)  # type: ignore[arg-type]
        del hf
        return model.to(device).eval()
    bridge = TransformerBridge.boot_transformers(
        name, device=None if device_map else device, dtype=dtype, device_map=device_map
    )
    return _compatibility_mode(bridge, name, processing, on_accelerator)


def _check_plain_llama(c: Any, name: str) -> None:
    """The conversion handles the plain Llama computation only; anything else is refused."""
    why = None
    if c.model_type not in ("llama", "mistral"):
        why = f"it is a {c.model_type!r} model"
    elif (getattr(c, "rope_scaling", None) or {}).get("rope_type", "default") != "default":
        why = f"it uses RoPE scaling {c.rope_scaling}"
    elif getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        why = "it has attention / MLP biases"
    elif getattr(c, "head_dim", None) not in (None, c.hidden_size // c.num_attention_heads):
        why = f"its head_dim {c.head_dim} is not hidden_size / num_attention_heads"
    if why:
        raise ValueError(
            f"backend='hooked' builds a HookedTransformer from plain Llama-architecture folders; "
            f"{name!r} cannot be converted exactly ({why}). Use backend='bridge', or an "
            "official TransformerLens name."
        )


def _check_conversion(model: HookedTransformer, hf: Any, name: str) -> None:
    """The converted model must give the HF model's logits (up to a constant shift)."""
    ids = (torch.arange(1, 9) * 7919 % max(int(model.cfg.d_vocab) - 1, 1)).view(1, -1)
    ids = ids.to(model_device(model))
    with torch.inference_mode():
        a = model(ids)[0].float()
        b = hf(input_ids=ids).logits[0].float()
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    err = float((a - b).norm() / b.norm().clamp_min(1e-12))
    tol = 1e-3 if hf.dtype == torch.float32 else 5e-2
    if not err < tol:
        raise ValueError(
            f"the HookedTransformer built from {name!r} does not reproduce the HF model "
            f"(relative logit error {err:.3g}); use backend='bridge'"
        )


def _official(name: str) -> str:
    return _tl.official_model_name(name) or name


def _is_official(name: str) -> bool:
    return _tl.official_model_name(name) is not None


def _hooked_from_llama(
    hf: Any, tok: Any, name: str, device: str, processing: WeightProcessing = "auto"
) -> HookedTransformer:
    """A HookedTransformer with the weights of a Llama-architecture HF model (processed on
    the CPU, then moved)."""
    config_class = _tl.hooked_transformer_config()
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    c = hf.config
    n_kv = c.num_key_value_heads
    cfg = config_class(
        d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=min(c.max_position_embeddings, 8192),
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=n_kv if n_kv != c.num_attention_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads,
        rotary_base=int(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        model_name=name,
        device=device,
        dtype=hf.dtype,
        default_prepend_bos=True,
    )
    model = _tl.hooked_transformer_class()(cfg, tokenizer=tok, move_to_device=False)
    mode = "full" if processing == "auto" else processing
    model.load_and_process_state_dict(
        convert_llama_weights(hf, cfg),
        fold_ln=mode == "full",
        center_writing_weights=mode == "full",
        center_unembed=mode != "none",
    )
    model._steerlens_processing = mode  # type: ignore[assignment]
    return model.to(device).eval()


def model_name(model: HookedModel) -> str:
    """The name a model was loaded under (recorded in steering-vector files)."""
    return str(model.cfg.model_name)


def model_device(model: HookedModel) -> torch.device:
    """Device of the input embedding (where token ids must go)."""
    return next(model.parameters()).device


def default_layers(model: HookedModel | int) -> list[int]:
    """Steering layers at the research's relative depth (16-22 of 32).

    15-21 on SmolLM2's 30 layers, 2-3 on the 4-layer tiny model.
    """
    n = model if isinstance(model, int) else int(model.cfg.n_layers)
    if n < 1:
        raise ValueError(f"a model needs at least one layer, got {n}")
    lo, hi, ref = _RESEARCH_LAYERS
    start = min(n - 1, round(lo / ref * n))
    stop = min(n - 1, max(start, round(hi / ref * n)))
    return list(range(start, stop + 1))


@contextmanager
def frozen_weights(model: HookedModel) -> Iterator[HookedModel]:
    """The model's weights stop requiring grad inside the block (a steering vector or an
    activation is what is being differentiated); the flags are restored on exit, also after an
    error."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)
