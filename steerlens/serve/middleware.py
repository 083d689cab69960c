"""The API server's check of every completion request (an ASGI middleware vLLM's OpenAI
server loads with ``--middleware``): the steering keys are read from ``vllm_xargs`` (the
OpenAI ``user`` field names the vector when ``steer_user`` does not), checked against the
vector folder and the served model, and written back as ``vllm_xargs``; a bad request is
answered 400 / 404 with the field at fault before it reaches the engine, so nothing a client
sends can stop the worker or touch another request. No vLLM import: it is plain ASGI."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from steerlens.serve.spec import SpecError, SteerSpec
from steerlens.serve.store import ServedModel, VectorStore
from steerlens.serve.worker import serve_settings

__all__ = ["SteeringMiddleware", "check_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATHS = ("/v1/completions", "/v1/chat/completions")


def check_body(body: dict[str, Any], store: VectorStore, max_alpha: float) -> dict[str, Any]:
    """The request body with its steering keys checked and in ``vllm_xargs`` (``SpecError``
    otherwise)."""
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise SpecError("vllm_xargs must be an object", field="vllm_xargs")
    user = body.get("user")
    spec = SteerSpec.from_request(xargs, user_field=user if isinstance(user, str) else None)
    if spec.steered:
        spec.checked(max_alpha)
        assert spec.user is not None
        store.vector(spec.user)
        if spec.condition not in ("own", "none"):
            store.condition(spec.condition)
    elif spec.user is None and (xargs or {}).get("steer_alpha") not in (None, 0, 0.0):
        raise SpecError(
            "steer_alpha without a vector: name one (steer_user or user)", field="steer_user"
        )
    rest = {k: v for k, v in (xargs or {}).items() if not k.startswith("steer_")}
    out = dict(body)
    out["vllm_xargs"] = {**rest, **(spec.to_args() if spec.user is not None else {})}
    if not out["vllm_xargs"]:
        del out["vllm_xargs"]
    return out


class SteeringMiddleware:
    """ASGI middleware: ``check_body`` on POSTs to the completion endpoints."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        settings = serve_settings()
        model = ServedModel(
            str(settings["model_name"]), int(settings["d_model"]), int(settings["n_layers"])
        )
        self.store = VectorStore(settings["vectors"], model, int(settings.get("max_loaded", 256)))
        self.max_alpha = float(settings.get("max_alpha", 1e4))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in PATHS
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None  # not JSON: vLLM answers it
        if isinstance(body, dict):
            try:
                raw = json.dumps(check_body(body, self.store, self.max_alpha)).encode()
            except SpecError as e:
                await _error(send, e)
                return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(raw)).encode())]}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _error(send: Send, e: SpecError) -> None:
    kind = "NotFoundError" if e.status == 404 else "BadRequestError"
    message = str(e) if str(e).startswith(e.field) else f"{e.field}: {e}"
    payload = {"error": {"message": message, "type": kind, "param": e.field, "code": e.status}}
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": e.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
