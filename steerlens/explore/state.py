"""One workbench configuration: what the URL, the JSON export and every "copy as" hold.

``ExploreState`` is the explorer's single source of truth: the page's controls write it into
the URL's query string, and the page is drawn from the URL, so a copied link reopens the same
view. Its fields follow a sweep's config (``steerlens sweep``) plus the prompt.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from steerlens.core.conditions import parse_gate_name

__all__ = ["DEFAULT_PROMPT", "ExploreState", "number"]

DEFAULT_PROMPT = "Should I tell my friend that their business idea is bad?"
ColourBy = Literal["kl", "projection"]
_MAX_PROMPT = 4000


def number(value: float | int) -> str:
    """A number as the shortest text that reads back to the same float (``4``, ``0.1``,
    ``0.30000000000000004``)."""
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _floats(value: Any, what: str) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: a comma-separated list of numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what}: every value must be finite, got {value!r}")
    return out


def _ints(value: Any, what: str) -> tuple[int, ...]:
    out = _floats(value, what)
    if any(v != int(v) or v < 0 for v in out):
        raise ValueError(f"{what}: non-negative whole numbers, got {value!r}")
    return tuple(int(v) for v in out)


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    table = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}
    if str(value).lower() not in table:
        raise ValueError(f"{what}: true or false, got {value!r}")
    return table[str(value).lower()]


@dataclass(frozen=True)
class ExploreState:
    """A workbench view.

    Args:
        prompt: the user prompt (chat-formatted when ``chat``).
        vector: a vector of the opened run or vector folder by key (``population``,
            ``dislike-weighted/user003``, a file stem of ``--vectors``) or a path to a
            ``.safetensors`` / ``.gguf`` file.
        user: the user whose prompts, card and condition pane are shown (None: none).
        alphas: the α ladder, 3-7 values, generated in one batched call.
        kl_budgets: instead of ``alphas``, 2-6 KL budgets (nats per token on neutral text),
            each turned into an α by ``calibrate_alpha``; the ladder is 0 and those α.
        layers: steer these layers of the vector only (empty: all of its layers).
        gate: ``all`` | ``prefill`` | ``generated`` | ``first:K``.
        chat: apply the model's chat template to the prompt.
        max_new_tokens: tokens generated per α.
        colour_by: colour tokens by their KL to the unsteered model or their projection on
            the vector.
        threshold: the condition's threshold in the condition pane (None: the fitted one).
        seed: the run's seed (generation is greedy; the seed is recorded for exports).
    """

    prompt: str = DEFAULT_PROMPT
    vector: str = "population"
    user: str | None = None
    alphas: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0)
    kl_budgets: tuple[float, ...] = ()
    layers: tuple[int, ...] = ()
    gate: str = "all"
    chat: bool = True
    max_new_tokens: int = 24
    colour_by: ColourBy = "kl"
    threshold: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "alphas", _floats(self.alphas, "alphas"))
        set_(self, "kl_budgets", _floats(self.kl_budgets, "kl_budgets"))
        set_(self, "layers", _ints(self.layers, "layers"))
        set_(self, "chat", _bool(self.chat, "chat"))
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt: type or pick a prompt")
        if len(self.prompt) > _MAX_PROMPT:
            raise ValueError(f"prompt: at most {_MAX_PROMPT} characters")
        if not isinstance(self.vector, str) or not self.vector.strip():
            raise ValueError("vector: pick a vector or give a file")
        if self.kl_budgets:
            if not 2 <= len(self.kl_budgets) <= 6 or min(self.kl_budgets) <= 0:
                raise ValueError("kl_budgets: 2-6 budgets, each > 0 (nats per token)")
        elif not 3 <= len(set(self.alphas)) == len(self.alphas) <= 7:
            raise ValueError(f"alphas: 3-7 distinct values, got {list(self.alphas)}")
        position, condition = parse_gate_name(self.gate)
        if condition is not None:
            raise ValueError(
                "gate: a position gate (all, prefill, generated, first:K); a vector's own "
                "condition applies by itself (threshold in the condition pane)"
            )
        try:
            set_(self, "max_new_tokens", int(self.max_new_tokens))
            set_(self, "seed", int(self.seed))
        except (TypeError, ValueError):
            raise ValueError("max_new_tokens and seed are whole numbers") from None
        if not 1 <= self.max_new_tokens <= 256:
            raise ValueError(f"max_new_tokens: 1-256, got {self.max_new_tokens}")
        if self.colour_by not in ("kl", "projection"):
            raise ValueError(f"colour_by: 'kl' or 'projection', got {self.colour_by!r}")
        if self.threshold is not None:
            set_(self, "threshold", _floats([self.threshold], "threshold")[0])
        if self.user is not None and not str(self.user).strip():
            set_(self, "user", None)
        del position

    # the URL ---------------------------------------------------------------------------
    def to_query(self) -> str:
        """The query string (without ``?``): the prompt, the vector and the ladder always (an
        empty query means the page's default view, not this one), the other fields where
        they are not their default; numbers at full precision."""
        default = ExploreState()
        always = {"prompt", "vector", "kl_budgets" if self.kl_budgets else "alphas"}
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name) and f.name not in always:
                continue
            if isinstance(value, tuple):
                out[f.name] = ",".join(number(v) for v in value)
            elif isinstance(value, bool):
                out[f.name] = "1" if value else "0"
            else:
                out[f.name] = number(value) if isinstance(value, float) else str(value)
        return urlencode(out)

    @classmethod
    def from_query(cls, query: str) -> ExploreState:
        """The state a query string (with or without ``?``) holds; unknown keys are an error."""
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
        return cls.from_dict(dict(pairs))

    # JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExploreState:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; a state has {sorted(known)}")
        data = dict(data)
        if data.get("threshold") in ("", "none", "None"):
            data["threshold"] = None
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ExploreState:
        """A state from ``to_json``'s text, or from an export's ``{"state": ..., "provenance":
        ...}``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}") from None
        if isinstance(data, dict) and isinstance(data.get("state"), dict):
            data = data["state"]
        if not isinstance(data, dict):
            raise ValueError("a state is a JSON object")
        return cls.from_dict(data)
