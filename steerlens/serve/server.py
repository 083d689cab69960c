"""``steerlens serve``: vLLM's OpenAI-compatible server with the steering worker and the
request check (``SteeringMiddleware``). ``server_command`` builds the command line and its
environment (tests start it as a subprocess); ``serve`` runs it in the foreground."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from steerlens.serve.engine import DEFAULT_MAX_ALPHA, engine_args, model_folder, worker_settings
from steerlens.serve.worker import ENV

__all__ = ["serve", "server_command"]


def _model_shape(folder: str) -> tuple[int, int]:
    """(d_model, n_layers) from the model's ``config.json`` (a local folder or the hub)."""
    path = Path(folder) / "config.json"
    if path.exists():
        cfg: dict[str, Any] = json.loads(path.read_text())
    else:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(folder).to_dict()
    return int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])


def server_command(
    model: str,
    vectors: str | Path,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    dtype: str = "auto",
    max_alpha: float = DEFAULT_MAX_ALPHA,
    conditions: bool = True,
    kv_cache_gib: float = 1.0,
    max_model_len: int = 2048,
    extra: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment. ``dtype="auto"``: float32 on the CPU (as
    steerlens loads models there), the model's own on a GPU."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise ImportError("vLLM is not installed here: use the serve environment (.venv-serve)")
    folder, name = model_folder(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "auto"
    d_model, n_layers = _model_shape(folder)
    settings = json.loads(worker_settings(vectors, name, max_alpha, conditions=conditions))
    settings.update(d_model=d_model, n_layers=n_layers)
    env = {**os.environ, ENV: json.dumps(settings), "VLLM_USE_V2_MODEL_RUNNER": "0"}
    args = engine_args(device, dtype, conditions)
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *(extra or []),  # first: the steering's own flags below win
        "--model",
        folder,
        "--tokenizer",
        folder,
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        args["dtype"],
        "--worker-cls",
        args["worker_cls"],
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--max-model-len",
        str(max_model_len),
        "--middleware",
        "steerlens.serve.middleware.SteeringMiddleware",
        "--seed",
        "0",
    ]
    if conditions:
        cmd.append("--no-enable-chunked-prefill")
    if device == "cpu":
        cmd += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * 2**30))]
    return cmd, env


def serve(model: str, vectors: str | Path, **kwargs: Any) -> int:
    """Run the server in the foreground until it stops; returns its exit code."""
    cmd, env = server_command(model, vectors, **kwargs)
    return subprocess.call(cmd, env=env)
