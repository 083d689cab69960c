"""vLLM in this process with the steering worker: ``SteeredLLM`` (offline, ``vllm.LLM``) and
what ``steerlens serve`` shares with it (the model's folder, the engine's arguments and the
worker's settings). Importing this module does not import vLLM; making an engine does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlens.core.conditions import Condition
from steerlens.core.vectors import SteeringVector
from steerlens.serve.spec import SteerSpec
from steerlens.serve.worker import ENV, POOL_KEY

__all__ = ["SteeredLLM", "engine_args", "model_folder", "worker_settings"]

DEFAULT_MAX_ALPHA = 1e4


def model_folder(name: str) -> tuple[str, str]:
    """(the folder or hub name vLLM loads, the model name vectors record) for a steerlens
    model name: the embedded model's dequantised HF folder (made once), a local HF folder as
    it is, or a hub name (vLLM downloads it; vectors built by ``load_model(name)`` record
    ``name``)."""
    from steerlens.core import _embedded

    if name == _embedded.EMBEDDED_NAME:
        folder = _embedded._cache_dir()
        if not (folder / "config.json").exists():
            _embedded.load_embedded_hf()  # dequantises the GGUF once into the folder
        return str(folder), name
    if name == "tiny-random":
        raise ValueError("the tiny random model has no weights on disk for vLLM: serve a real one")
    return name, name


def worker_settings(
    vectors: str | Path,
    model_name: str,
    max_alpha: float = DEFAULT_MAX_ALPHA,
    max_loaded: int = 256,
    conditions: bool = True,
) -> str:
    """``$STEERLENS_SERVE`` for the worker (JSON)."""
    folder = Path(vectors).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no vector folder at {folder}")
    if not max_alpha > 0:
        raise ValueError(f"max_alpha must be > 0, got {max_alpha}")
    return json.dumps(
        {
            "vectors": str(folder),
            "model_name": model_name,
            "max_alpha": float(max_alpha),
            "max_loaded": int(max_loaded),
            "conditions": bool(conditions),
        }
    )


def engine_args(device: str, dtype: str, conditions: bool = True) -> dict[str, Any]:
    """vLLM engine arguments the steering needs: the worker, eager mode (forward hooks do not
    run in CUDA graphs), no prefix caching (a cached prompt is not recomputed, so its condition
    could not be read and its steering would come from another request) and, where conditions
    are served, no chunked prefill (a condition reads the whole prompt in one pass)."""
    worker = "CPUSteeringWorker" if device == "cpu" else "GPUSteeringWorker"
    args: dict[str, Any] = {
        "worker_cls": f"steerlens.serve.worker.{worker}",
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "dtype": dtype,
    }
    if conditions:
        args["enable_chunked_prefill"] = False
    return args


def _digest(tensors: Sequence[Any], meta: Any) -> str:
    h = hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode())
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class SteeredLLM:
    """A ``vllm.LLM`` whose requests carry their own steering (``generate_ids``).

    Args:
        model: a steerlens model name (the embedded model by default) or an HF folder.
        vectors: the folder of named vectors (``<name>.safetensors``); vectors passed as objects
            are written into a private folder beside it under their content hash.
        dtype: the weights' dtype in vLLM (``"float32"`` on CPU matches steerlens' default).
        max_model_len / kv_cache_gib / max_num_seqs: vLLM's sizes.
        **llm_kwargs: passed to ``vllm.LLM``.
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        *,
        vectors: str | Path | None = None,
        dtype: str = "float32",
        max_alpha: float = DEFAULT_MAX_ALPHA,
        max_model_len: int = 2048,
        kv_cache_gib: float = 1.0,
        max_num_seqs: int = 64,
        **llm_kwargs: Any,
    ) -> None:
        import torch
        from vllm import LLM

        self._tmp = tempfile.TemporaryDirectory(prefix="steerlens-serve-")
        self.vectors = Path(vectors) if vectors is not None else Path(self._tmp.name)
        (self.vectors / "conditions").mkdir(parents=True, exist_ok=True)
        folder, self.model_name = model_folder(model)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        os.environ[ENV] = worker_settings(self.vectors, self.model_name, max_alpha)
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        kwargs = {
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "seed": 0,
            **({"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)} if device == "cpu" else {}),
            **llm_kwargs,
            **engine_args(device, dtype),  # last: the steering's settings are not optional
        }
        self.llm = LLM(model=folder, tokenizer=folder, **kwargs)

    def close(self) -> None:
        """Stop the engine's processes and remove the private vector folder."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self._tmp.cleanup()

    def add_vector(self, vector: SteeringVector) -> str:
        """Write ``vector`` into the folder under its content hash; returns the name."""
        cond = vector.condition
        meta = [
            vector.model_name,
            vector.hook,
            vector.layers,
            None if cond is None else cond.describe(),
        ]
        tensors = [vector.directions[k] for k in vector.layers] + ([cond.direction] if cond else [])
        name = f"v-{_digest(tensors, meta)}"
        path = self.vectors / f"{name}.safetensors"
        if not path.exists():
            vector.save(path)
        return name

    def add_condition(self, condition: Condition) -> str:
        name = f"c-{_digest([condition.direction], condition.describe())}"
        path = self.vectors / "conditions" / f"{name}.safetensors"
        if not path.exists():
            condition.save(path)
        return name

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        specs: Sequence[SteerSpec | None],
        max_new_tokens: int,
        *,
        pool_masks: Sequence[Sequence[bool] | None] | None = None,
        stop_token_ids: Sequence[int] = (),
        ignore_eos: bool = False,
    ) -> list[list[int]]:
        """Greedy continuations of token-id prompts, request ``i`` steered by ``specs[i]``
        (None: unsteered); ``pool_masks[i]``: the prompt tokens its condition averages."""
        from vllm import SamplingParams

        if len(specs) != len(prompts):
            raise ValueError(f"{len(specs)} steering specs for {len(prompts)} prompts")
        params = []
        for i, spec in enumerate(specs):
            extra: dict[str, Any] = spec.to_args() if spec is not None else {}
            if pool_masks is not None and pool_masks[i] is not None:
                extra[POOL_KEY] = [int(bool(x)) for x in pool_masks[i]]  # type: ignore[union-attr]
            params.append(
                SamplingParams(
                    temperature=0.0,
                    max_tokens=max_new_tokens,
                    stop_token_ids=list(stop_token_ids),
                    ignore_eos=ignore_eos,
                    extra_args=extra or None,
                )
            )
        outs = self.llm.generate(
            [{"prompt_token_ids": list(map(int, p))} for p in prompts], params, use_tqdm=False
        )
        return [list(o.outputs[0].token_ids) for o in outs]
