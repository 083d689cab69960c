"""Steering inside vLLM equals steerlens' own engine token for token: ``sl.generate(...,
engine="vllm")`` and ``run_sweep(..., engine="vllm")`` against the ``hf`` engine, and
``steerlens serve`` over HTTP (completions and chat, the ``user`` field, 30 concurrent mixed
requests each equal to their solo answer, bad input answered 4xx while the server keeps
serving)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="the serve suite runs in .venv-serve (make test-serve)")

import torch

import steerlens as sl
from steerlens.core.conditions import Condition
from steerlens.core.gates import FirstK
from steerlens.core.tokens import encode_prompts
from steerlens.experiments.sweep import GenerationSettings, SweepPrompt, make_grid, run_sweep

MODEL = "smollm2-135m-instruct"
LAYERS = (12, 16)
PROMPTS = [
    "Tell me about the weather today.",
    "How do I cook rice?",
    "What is a good name for a cat?",
    "Give me one tip for a job interview.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


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


N = 10


def _tokens(model, prompts, engine, **kw) -> list[list[int]]:
    gen = sl.generate(
        model,
        prompts,
        max_new_tokens=N,
        return_tokens=True,
        progress_bar=False,
        engine=engine,
        **kw,
    )
    return [t.tolist() for t in gen.tokens]


@pytest.mark.parametrize("gate", ["all", "prefill", FirstK(2), "generated"])
def test_per_row_vectors_and_alphas_on_vllm_equal_the_hf_engine(model, vectors, gate):
    rows = PROMPTS * 2
    vecs = [vectors["alice"], vectors["bob"]] * len(PROMPTS)
    alphas = [0.0, 4.0, 8.0, 12.0, 3.0, 6.0, 9.0, 2.0]
    kw: dict[str, Any] = dict(steering=vecs, alpha=alphas, gate=gate)
    want = _tokens(model, rows, "hf", **kw)
    assert _tokens(model, rows, "vllm", **kw) == want
    assert _tokens(model, rows, "vllm") == _tokens(model, rows, "hf")  # unsteered too
    assert want != _tokens(model, rows, "hf")  # the steering changed something


@pytest.mark.parametrize("which", ["cond_last", "cond_mean"])
def test_conditions_on_vllm_equal_the_hf_engine(model, vectors, which):
    cond = vectors[which]
    kw: dict[str, Any] = dict(steering=vectors["bob"], alpha=10.0, gate=cond & FirstK(4))
    want = _tokens(model, PROMPTS, "hf", **kw)
    assert _tokens(model, PROMPTS, "vllm", **kw) == want
    # the vector's own condition, as the server's "own"
    own: dict[str, Any] = dict(steering=vectors["carol"], alpha=[6.0, 8.0, 10.0, 12.0])
    assert _tokens(model, PROMPTS, "vllm", **own) == _tokens(model, PROMPTS, "hf", **own)


def test_a_sweep_on_vllm_writes_the_hf_engines_rows(model, vectors, tmp_path):
    prompts = [SweepPrompt(f"p{i}", p, f"u{i % 2}", "chat") for i, p in enumerate(PROMPTS)]
    table = {"personal": {"u0": vectors["alice"], "u1": vectors["bob"]}}
    gates = ["all", "first:2", "condition&first:4"]
    cells = make_grid(prompts, ["personal"], [0.0, 4.0, 8.0], gates)
    settings = GenerationSettings(max_new_tokens=N, batch_size=8, cells_per_batch=32)
    conditions = {"condition": vectors["cond_last"]}

    def measure(model, rows, gen):
        return {"n_tokens": [len(t) for t in gen.tokens]}

    frames = {
        e: run_sweep(
            model,
            cells,
            prompts,
            table,
            tmp_path / e,
            settings=settings,
            measure=measure,
            conditions=conditions,
            engine=e,
            progress_bar=False,
        )
        for e in ("hf", "vllm")
    }
    cols = ["key", "generation", "n_tokens", "projection", "steered"]
    hf, vl = (frames[e].sort_values("key")[cols].reset_index(drop=True) for e in ("hf", "vllm"))
    assert len(hf) == len(cells) and hf.equals(vl)
    assert hf["steered"].dropna().nunique() == 2  # the condition steered some rows, not all


# --- over HTTP ------------------------------------------------------------------------------------


def _complete(server, ids, **steer) -> tuple[int, dict[str, Any]]:
    body = {"model": MODEL, "prompt": ids, "max_tokens": N, "temperature": 0.0, **steer}
    return post(server + "/v1/completions", body)


def _text(reply: dict[str, Any]) -> str:
    return reply["choices"][0]["text"]


def test_the_server_answers_as_generate_does(model, vectors, server):
    ids = [x.tolist() for x in encode_prompts(model, PROMPTS)]
    for user, alpha, gate, sl_gate in (
        ("alice", 6.0, "all", "all"),
        ("bob", 9.0, "first:2", FirstK(2)),
        ("bob", 9.0, "generated", "generated"),
        ("carol", 10.0, "all", "all"),  # its own condition (last-token pooled)
    ):
        want = sl.generate(
            model,
            PROMPTS,
            steering=vectors[user],
            alpha=alpha,
            gate=sl_gate,
            max_new_tokens=N,
            progress_bar=False,
            engine="hf",
        )
        for i, p in enumerate(ids):
            status, reply = _complete(server, p, **sl.serve.request_args(user, alpha, gate))
            assert status == 200, reply
            assert _text(reply) == want[i], (user, gate, i)
    # a named, mean-pooled condition file on raw-text prompts (whose non-special tokens, what
    # the server averages, are the content tokens sl.generate averages)
    raw = [x.tolist() for x in encode_prompts(model, PROMPTS, chat=False)]
    want = sl.generate(
        model,
        PROMPTS,
        steering=vectors["alice"],
        alpha=12.0,
        gate=vectors["cond_mean"],
        chat=False,
        max_new_tokens=N,
        progress_bar=False,
        engine="hf",
    )
    for i, p in enumerate(raw):
        status, reply = _complete(
            server, p, **sl.serve.request_args("alice", 12.0, "all", "careful")
        )
        assert status == 200 and _text(reply) == want[i], i
    # chat completions, the vector named by the OpenAI user field alone
    want = sl.generate(
        model,
        PROMPTS[:1],
        steering=vectors["alice"],
        alpha=6.0,
        max_new_tokens=N,
        progress_bar=False,
        engine="hf",
    )
    status, reply = post(
        server + "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPTS[0]}],
            "max_tokens": N,
            "temperature": 0.0,
            "user": "alice",
            "vllm_xargs": {"steer_alpha": 6.0},
        },
    )
    assert status == 200 and reply["choices"][0]["message"]["content"] == want[0]


BAD = [
    ({"user": "nobody", "vllm_xargs": {"steer_alpha": 2.0}}, 404, "nobody"),
    ({"vllm_xargs": {"steer_user": "../alice", "steer_alpha": 2.0}}, 400, "steer_user"),
    ({"vllm_xargs": {"steer_user": "sub/alice", "steer_alpha": 2.0}}, 400, "steer_user"),
    ({"user": "alice", "vllm_xargs": {"steer_alpha": 99.0}}, 400, "steer_alpha"),
    ({"user": "alice", "vllm_xargs": {"steer_alpha": "nan"}}, 400, "steer_alpha"),
    ({"user": "alice", "vllm_xargs": {"steer_alpha": "inf"}}, 400, "steer_alpha"),
    ({"user": "alice", "vllm_xargs": {"steer_gate": "sometimes"}}, 400, "steer_gate"),
    ({"user": "llama_user", "vllm_xargs": {"steer_alpha": 1.0}}, 400, "steer_user"),
    ({"user": "narrow", "vllm_xargs": {"steer_alpha": 1.0}}, 400, "steer_user"),
    ({"user": "alice", "vllm_xargs": {"steer_condition": "rash"}}, 404, "rash"),
]


def test_30_concurrent_mixed_requests_each_equal_their_solo_answer(model, server):
    ids = [x.tolist() for x in encode_prompts(model, PROMPTS)]
    specs: list[dict[str, Any]] = []
    for k in range(30):
        user = ("alice", "bob", "carol", None)[k % 4]
        alpha = (3.0, 6.0, 9.0)[k % 3]
        gate = ("all", "prefill", "first:2", "generated")[(k // 4) % 4]
        steer = sl.serve.request_args(user, alpha, gate) if user else {}
        if user == "alice" and k % 3 == 0:
            steer["vllm_xargs"]["steer_condition"] = "careful"  # a condition file (mean)
        specs.append({"ids": ids[k % 4], **steer})
    solo = [_complete(server, s["ids"], **_steer(s)) for s in specs]
    assert all(status == 200 for status, _ in solo)

    def later(delay: float, *args: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
        time.sleep(delay)  # staggered: new prompts arrive while earlier requests decode
        return _complete(*args, **kw)

    with ThreadPoolExecutor(max_workers=len(specs) + len(BAD)) as pool:
        futures = [
            pool.submit(later, 0.04 * k, server, s["ids"], **_steer(s)) for k, s in enumerate(specs)
        ]
        bad = [
            pool.submit(later, 0.1 * k, server, ids[0], **body)
            for k, (body, _, _) in enumerate(BAD)
        ]
        together = [f.result() for f in futures]
        refused = [f.result() for f in bad]
    assert [_text(r) for _, r in together] == [_text(r) for _, r in solo]
    assert len({_text(r) for _, r in solo}) > 8  # the requests really differ
    for (status, reply), (_, code, field) in zip(refused, BAD, strict=True):
        assert status == code and field in reply["error"]["message"], reply
    status, reply = _complete(server, ids[1], **_steer(specs[1]))  # still serving
    assert status == 200 and _text(reply) == _text(solo[1][1])


def _steer(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "ids"}


def test_serve_refuses_a_missing_vector_folder(tmp_path):
    from typer.testing import CliRunner

    from steerlens.cli import app

    res = CliRunner().invoke(app, ["serve", "--vectors", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no vector folder" in res.output
