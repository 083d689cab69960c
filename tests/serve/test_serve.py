"""Steering inside vLLM equals steerlens' own engine token for token: ``sl.generate(...,
engine="vllm")`` and ``run_sweep(..., engine="vllm")`` against the ``hf`` engine, and
``steerlens serve`` over HTTP (completions and chat, the ``user`` field, 30 concurrent mixed
requests each equal to their solo answer, bad input answered 4xx while the server keeps
serving)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("vllm", reason="the serve suite runs in .venv-serve (make test-serve)")

from serve_helpers import MODEL, PROMPTS, post

import steerlens as sl
from steerlens.core.gates import FirstK
from steerlens.core.tokens import encode_prompts
from steerlens.experiments.sweep import GenerationSettings, SweepPrompt, make_grid, run_sweep

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
    cells = make_grid(prompts, ["personal"], [0.0, 4.0, 8.0], ["all", "first:2"])
    settings = GenerationSettings(max_new_tokens=N, batch_size=8, cells_per_batch=32)

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
            engine=e,
            progress_bar=False,
        )
        for e in ("hf", "vllm")
    }
    cols = ["key", "generation", "n_tokens"]
    hf, vl = (frames[e].sort_values("key")[cols].reset_index(drop=True) for e in ("hf", "vllm"))
    assert len(hf) == len(cells) and hf.equals(vl)


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
    with ThreadPoolExecutor(max_workers=len(specs) + len(BAD)) as pool:
        futures = [pool.submit(_complete, server, s["ids"], **_steer(s)) for s in specs]
        bad = [pool.submit(_complete, server, ids[0], **body) for body, _, _ in BAD]
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
