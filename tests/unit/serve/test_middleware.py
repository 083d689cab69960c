"""The API server's request check (plain ASGI, no vLLM): a good body reaches the app with its
steering keys in ``vllm_xargs`` (the OpenAI ``user`` field moved there), a bad one is answered
400 / 404 naming its field and never reaches the app; other paths pass untouched."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from steerlens.core.vectors import SteeringVector
from steerlens.serve.middleware import SteeringMiddleware, check_body
from steerlens.serve.spec import SpecError
from steerlens.serve.store import ServedModel, VectorStore
from steerlens.serve.worker import ENV


@pytest.fixture
def folder(tmp_path):
    SteeringVector({1: torch.ones(8)}, model_name="tiny-random").save(
        tmp_path / "alice.safetensors"
    )
    return tmp_path


def test_check_body_moves_the_user_field_and_keeps_other_xargs(folder):
    store = VectorStore(folder, ServedModel("tiny-random", 8, 2))
    body = {"prompt": "hi", "user": "alice", "vllm_xargs": {"steer_alpha": 2, "other": 1}}
    out = check_body(body, store, max_alpha=4.0)
    assert out["vllm_xargs"] == {
        "other": 1,
        "steer_user": "alice",
        "steer_alpha": 2.0,
        "steer_gate": "all",
    }
    assert out["prompt"] == "hi" and body["vllm_xargs"] == {"steer_alpha": 2, "other": 1}
    assert "vllm_xargs" not in check_body({"prompt": "hi"}, store, 4.0)  # unsteered: as sent
    with pytest.raises(SpecError, match="without a vector"):
        check_body({"vllm_xargs": {"steer_alpha": 2.0}}, store, 4.0)
    with pytest.raises(SpecError, match="above the server's bound"):
        check_body({"user": "alice", "vllm_xargs": {"steer_alpha": 5.0}}, store, 4.0)


def _call(app, path, body):
    sent, seen = [], []

    async def downstream(scope, receive, send):
        message = await receive()
        seen.append((scope, json.loads(message["body"])))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"1")]}
    asyncio.run(app(downstream)(scope, receive, send))
    return sent, seen


def test_the_middleware_answers_bad_requests_itself(folder, monkeypatch):
    settings = {
        "vectors": str(folder),
        "model_name": "tiny-random",
        "d_model": 8,
        "n_layers": 2,
        "max_alpha": 4.0,
    }
    monkeypatch.setenv(ENV, json.dumps(settings))
    sent, seen = _call(SteeringMiddleware, "/v1/completions", {"prompt": "hi", "user": "alice"})
    scope, body = seen[0]
    assert body["vllm_xargs"]["steer_user"] == "alice" and sent[0]["status"] == 200
    length = dict(scope["headers"])[b"content-length"]
    assert int(length) == len(json.dumps(body).encode())  # the rewritten body's length
    for request, status, field in (
        ({"prompt": "hi", "user": "bob", "vllm_xargs": {"steer_alpha": 1.0}}, 404, "steer_user"),
        ({"prompt": "hi", "vllm_xargs": {"steer_user": "../alice"}}, 400, "steer_user"),
        ({"prompt": "hi", "user": "alice", "vllm_xargs": {"steer_gate": "x"}}, 400, "steer_gate"),
    ):
        sent, seen = _call(SteeringMiddleware, "/v1/chat/completions", request)
        error = json.loads(sent[1]["body"])["error"]
        assert not seen and sent[0]["status"] == status
        assert error["param"] == field and error["message"].startswith(field)
    # other paths: the user field is not read, but steering keys anywhere are checked
    sent, seen = _call(SteeringMiddleware, "/v1/models", {"user": "nobody"})
    assert seen[0][1] == {"user": "nobody"}
    for path, request, field in (
        (
            "/v1/responses",
            {"vllm_xargs": {"steer_user": "nobody", "steer_alpha": 1.0}},
            "steer_user",
        ),
        (
            "/inference/v1/generate",
            {"sampling_params": {"extra_args": {"steer_user": "a/b", "steer_alpha": 1.0}}},
            "steer_user",
        ),
        (
            "/v1/completions",
            {"user": "alice", "vllm_xargs": {"steerlens_pool_mask": 1}},
            "steerlens_pool_mask",
        ),
    ):
        sent, seen = _call(SteeringMiddleware, path, request)
        assert not seen and json.loads(sent[1]["body"])["error"]["param"] == field
    sent, seen = _call(
        SteeringMiddleware,
        "/inference/v1/generate",
        {"sampling_params": {"extra_args": {"steer_user": "alice", "steer_alpha": 2.0}}},
    )
    assert seen[0][1]["sampling_params"]["extra_args"]["steer_user"] == "alice"
