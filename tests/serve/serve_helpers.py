"""What the serve suite's fixtures and tests share."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

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
