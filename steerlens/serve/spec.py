"""A request's steering, as the server reads it: which vector (a user's or a named one), α,
the position gate and the condition, from flat ``vllm_xargs`` keys (``steer_user``,
``steer_alpha``, ``steer_gate``, ``steer_condition``) or the same keys in ``extra_args``; the
OpenAI ``user`` field selects the user's vector when no key names one.

Every value is checked here, before a request reaches the model: a bad one is a ``SpecError``
naming its field, with the HTTP status the server answers (400; 404 for an unknown vector,
raised by the store). ``request_args`` builds the request body's keys on the client side.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from steerlens.core.gates import Gate, parse_gate

__all__ = ["KEYS", "SpecError", "SteerSpec", "check_name", "request_args"]

KEYS = {
    "user": "steer_user",
    "alpha": "steer_alpha",
    "gate": "steer_gate",
    "condition": "steer_condition",
}
"""Spec field -> its flat request key (``vllm_xargs`` / ``extra_args``)."""

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")

ConditionUse = Literal["own", "none"]


class SpecError(ValueError):
    """A request the server refuses: ``status`` (400 bad value, 404 unknown vector) and the
    ``field`` at fault."""

    def __init__(self, message: str, *, field: str, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.status = field, status


def check_name(name: Any, field: str = "user") -> str:
    """A vector or condition name: letters, digits, ``_ . -``, not starting with a dot, no
    path separator and no ``..`` (a name is a file in one folder, never a path)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise SpecError(
            f"{field} must be a plain name (letters, digits, _ . -; no path separator or "
            f"'..'), got {name!r}",
            field=field,
        )
    return name


@dataclass(frozen=True)
class SteerSpec:
    """One request's steering: ``user`` (the vector's name; None: unsteered), ``alpha``,
    ``gate`` (``parse_gate`` names) and ``condition`` (``"own"``: the condition the vector
    file carries; ``"none"``: none; another name: ``<dir>/conditions/<name>.safetensors``)."""

    user: str | None = None
    alpha: float = 1.0
    gate: str = "all"
    condition: str = "own"

    def __post_init__(self) -> None:
        if self.user is not None:
            check_name(self.user, "steer_user")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
            raise SpecError(f"steer_alpha must be a finite number, got {a!r}", field="steer_alpha")
        object.__setattr__(self, "alpha", float(a))
        try:
            parse_gate(self.gate)
        except ValueError as e:
            raise SpecError(f"steer_gate: {e}", field="steer_gate") from None
        if self.condition not in ("own", "none"):
            check_name(self.condition, "steer_condition")

    @property
    def steered(self) -> bool:
        return self.user is not None and self.alpha != 0.0

    @property
    def position_gate(self) -> Gate:
        return Gate.parse(parse_gate(self.gate))

    def checked(self, max_alpha: float) -> SteerSpec:
        """Itself, if ``|alpha| <= max_alpha`` (the server's bound)."""
        if abs(self.alpha) > max_alpha:
            raise SpecError(
                f"steer_alpha {self.alpha:g} is above the server's bound {max_alpha:g}",
                field="steer_alpha",
            )
        return self

    @classmethod
    def from_request(
        cls, args: Mapping[str, Any] | None, user_field: str | None = None
    ) -> SteerSpec:
        """The spec of a request's ``extra_args`` (flat keys); the OpenAI ``user`` field names
        the vector when ``steer_user`` is absent. Unknown ``steer_*`` keys are an error (a
        typo must not serve an unsteered answer)."""
        args = dict(args or {})
        unknown = sorted(k for k in args if k.startswith("steer_") and k not in KEYS.values())
        if unknown:
            raise SpecError(
                f"unknown steering keys {unknown}; use {sorted(KEYS.values())}", field=unknown[0]
            )
        user = args.get(KEYS["user"], user_field)
        alpha = args.get(KEYS["alpha"], 1.0)
        if isinstance(alpha, str):  # vllm_xargs from a command line may arrive as text
            try:
                alpha = float(alpha)
            except ValueError:
                raise SpecError(
                    f"steer_alpha must be a number, got {alpha!r}", field="steer_alpha"
                ) from None
        return cls(
            user=user if user not in ("", None) else None,
            alpha=alpha,
            gate=args.get(KEYS["gate"], "all"),
            condition=args.get(KEYS["condition"], "own"),
        )

    def to_args(self) -> dict[str, Any]:
        """The flat keys of this spec (what ``from_request`` reads back)."""
        out: dict[str, Any] = {KEYS["alpha"]: self.alpha, KEYS["gate"]: self.gate}
        if self.user is not None:
            out[KEYS["user"]] = self.user
        if self.condition != "own":
            out[KEYS["condition"]] = self.condition
        return out


def request_args(
    user: str, alpha: float = 1.0, gate: str = "all", condition: str = "own"
) -> dict[str, Any]:
    """The keys to merge into an OpenAI-compatible request body for ``steerlens serve``:
    ``{"user": user, "vllm_xargs": {...}}`` (checked here as the server checks them)."""
    spec = SteerSpec(user=user, alpha=alpha, gate=gate, condition=condition)
    return {"user": user, "vllm_xargs": spec.to_args()}
