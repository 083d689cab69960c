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
from steerlens.serve.worker import POOL_KEY, serve_settings

__all__ = ["SteeringMiddleware", "check_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATHS = ("/v1/completions", "/v1/chat/completions")


def check_body(
    body: dict[str, Any], store: VectorStore, max_alpha: float, *, user_field: bool = True
) -> dict[str, Any]:
    """The request body with its steering keys checked and in ``vllm_xargs`` (``SpecError``
    otherwise); ``user_field``: the OpenAI ``user`` names the vector (completion endpoints)."""
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise SpecError("vllm_xargs must be an object", field="vllm_xargs")
    pool = (xargs or {}).get(POOL_KEY)
    if pool is not None and not (
        isinstance(pool, list) and all(x in (0, 1) and not isinstance(x, float) for x in pool)
    ):
        raise SpecError(f"{POOL_KEY} must be a list of 0 / 1, one a prompt token", field=POOL_KEY)
    user = body.get("user") if user_field else None
    spec = SteerSpec.from_request(
        {k: v for k, v in (xargs or {}).items() if k != POOL_KEY},
        user_field=user if isinstance(user, str) else None,
    )
    if spec.steered:
        store.steering(spec.checked(max_alpha))
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
    """ASGI middleware: every POST's JSON body checked (``_checked``) before vLLM reads it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        settings = serve_settings()
        model = ServedModel(
            str(settings["model_name"]),
            int(settings["d_model"]),
            int(settings["n_layers"]),
            conditions=bool(settings.get("conditions", True)),
        )
        self.store = VectorStore(settings["vectors"], model, int(settings.get("max_loaded", 256)))
        self.max_alpha = float(settings.get("max_alpha", 1e4))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
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
                raw = json.dumps(self._checked(scope.get("path"), body)).encode()
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

    def _checked(self, path: Any, body: dict[str, Any]) -> dict[str, Any]:
        """Every POST: the completion endpoints' bodies as ``check_body`` makes them (the
        ``user`` field included); any other body carrying steering keys (``vllm_xargs``, or a
        raw ``sampling_params.extra_args``) checked the same way, so no endpoint reaches the
        worker with an unchecked request."""
        if path in PATHS:
            return check_body(body, self.store, self.max_alpha)
        if "vllm_xargs" in body:
            return check_body(body, self.store, self.max_alpha, user_field=False)
        params = body.get("sampling_params")
        if isinstance(params, dict) and "extra_args" in params:
            extra = params["extra_args"]
            checked = check_body(
                {"vllm_xargs": extra}, self.store, self.max_alpha, user_field=False
            )
            return {
                **body,
                "sampling_params": {**params, "extra_args": checked.get("vllm_xargs") or {}},
            }
        return body


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
