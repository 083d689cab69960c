"""The serve suite (``make test-serve``): vLLM with the steering worker on the embedded
model, offline and over HTTP. Skipped where vLLM is not installed (the main environment)."""

from __future__ import annotations

import importlib.util
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

if importlib.util.find_spec("vllm") is None:  # the main environment: make test-serve runs them
    collect_ignore_glob = ["test_*.py"]

from serve_helpers import LAYERS, MODEL, PROMPTS, free_port

import steerlens as sl
from steerlens.core.conditions import Condition


@pytest.fixture(scope="session", autouse=True)
def _engines_stopped() -> Iterator[None]:
    """The offline engines stop inside the session (not at interpreter exit, after pytest
    has closed the streams vLLM logs its shutdown to)."""
    yield
    from steerlens.serve.generation import shutdown

    shutdown()


@pytest.fixture(scope="session")
def model() -> sl.HookedModel:
    return sl.load_model(MODEL)


def _vector(model: sl.HookedModel, seed: int, scale: float = 1.0, **kw: Any) -> sl.SteeringVector:
    """A random unit direction per layer times ``scale`` (α of a few then changes the
    tokens without wrecking every one)."""
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for layer in LAYERS:
        d = torch.randn(model.cfg.d_model, generator=g)
        dirs[layer] = d / d.norm() * scale
    return sl.SteeringVector(dirs, model_name=sl.model_name(model), **kw)


def condition_between(model: sl.HookedModel, pool: str, seed: int = 7) -> Condition:
    """A condition at layer 10 whose threshold lies between the 2nd and 3rd largest
    projections of PROMPTS (never on one: rounding would flip it)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(model.cfg.d_model, generator=g)
    probe = Condition(direction, 10, 0.0, pool=pool)  # type: ignore[arg-type]
    gen = sl.generate(
        model,
        PROMPTS,
        steering=_vector(model, 0),
        alpha=0.0,
        gate=probe,
        max_new_tokens=1,
        return_tokens=True,
        progress_bar=False,
    )
    proj = sorted(gen.projections)  # type: ignore[union-attr, arg-type]
    return probe.with_threshold((proj[1] + proj[2]) / 2)


@pytest.fixture(scope="session")
def vectors(model: sl.HookedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The server's folder: alice, bob, carol (carrying a condition), a condition file, and
    vectors that must be refused (another model's, another width's)."""
    folder = tmp_path_factory.mktemp("vectors")
    out: dict[str, Any] = {"folder": folder}
    out["alice"] = _vector(model, 1, 6.0)
    out["bob"] = _vector(model, 2, 9.0)
    out["cond_last"] = condition_between(model, "last")
    out["carol"] = _vector(model, 3, 8.0, condition=out["cond_last"])
    for name in ("alice", "bob", "carol"):
        out[name].save(folder / f"{name}.safetensors")
    out["cond_mean"] = condition_between(model, "mean", seed=11)
    out["cond_mean"].save(folder / "conditions" / "careful.safetensors")
    sl.SteeringVector(
        {12: torch.ones(model.cfg.d_model)}, model_name="meta-llama/Llama-3.1-8B-Instruct"
    ).save(folder / "llama_user.safetensors")
    sl.SteeringVector({12: torch.ones(64)}, model_name=None).save(folder / "narrow.safetensors")
    return out


@pytest.fixture(scope="session")
def server(vectors: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``steerlens serve`` on the embedded model (its command line), healthy within 240 s."""
    from steerlens.serve.server import server_command

    port = free_port()
    cmd, env = server_command(MODEL, vectors["folder"], port=port, max_alpha=50.0)
    log = Path(tmp_path_factory.mktemp("server")) / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError(f"the server was not healthy in 240 s: {log.read_text()[-3000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
