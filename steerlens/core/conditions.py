"""``Condition``: steer a row only when its prompt's own activation says so.

A position gate (``steerlens.core.gates``) decides *where in the sequence* to steer; a
condition decides *whether this prompt* is steered. At the prompt's pass, each row's residual
at ``blocks.{layer}.{hook}`` is pooled over the prompt (``pool="mean"``: its content tokens,
as ``cache_activations`` pools them; ``"last"``: its last token) and projected on
``direction``:

* ``projection = pooled · direction`` (float32);
* hard (``soft=None``): the row is steered when ``projection > threshold``, else not at all;
* soft (``soft=T``): its α is scaled by ``sigmoid((projection - threshold) / T)``.

The decision is made once per row, at the prompt, and holds for the whole generation. It
composes with a position gate (``Condition(...) & FirstK(4)``) and with per-row vectors and
α. The residual read is the one arriving at the condition's hook point (before any steering
the same call adds there), so steering the condition gates must sit at or after that point.
Peers: IBM's activation-steering (CAST) gates a behaviour vector on the prompt's similarity
to a condition vector in the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.gates import Gate, GateSpec, parse_gate
from steerlens.core.hook_names import HOOK_POINTS, hook_name

if TYPE_CHECKING:
    from steerlens.core.models import HookedModel

__all__ = ["Condition", "Conditional", "hook_order", "parse_gate_name", "split_gate"]

_FORMAT = "steerlens.condition/1"
ConditionPool = Literal["mean", "last"]


_WITHIN_BLOCK = {"hook_resid_pre": 0, "hook_resid_mid": 1, "hook_resid_post": 2}


def hook_order(layer: int, hook: str) -> tuple[int, int]:
    """Where a residual-stream point sits in the forward pass (earlier sorts first)."""
    if hook not in HOOK_POINTS:
        raise ValueError(f"hook must be one of {HOOK_POINTS}, got {hook!r}")
    return (layer, _WITHIN_BLOCK[hook])


@dataclass(frozen=True, eq=False)
class Condition:
    """Steer a row only when its pooled prompt activation projects above ``threshold``.

    Args:
        direction: ``[d_model]``; the projection is ``pooled · direction`` (not normalised:
            ``fit_condition`` returns a unit direction, so its threshold is in residual units).
        layer / hook: the residual-stream point read (``blocks.{layer}.{hook}``).
        threshold: rows whose projection is above it are steered.
        pool: ``"mean"`` over the prompt's content tokens or its ``"last"`` token.
        soft: ``None`` for a hard decision; a temperature ``T > 0`` to scale α by
            ``sigmoid((projection - threshold) / T)``.
        metadata: JSON-serialisable provenance (how it was fitted, on what).
    """

    direction: Float[Tensor, " d_model"]
    layer: int
    threshold: float
    pool: ConditionPool = "mean"
    soft: float | None = None
    hook: str = "hook_resid_post"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.direction
        if not isinstance(d, Tensor) or d.ndim != 1 or d.numel() == 0:
            raise ValueError(f"a condition's direction must be a 1-D tensor, got {_shape(d)}")
        if not d.is_floating_point() or not torch.isfinite(d).all():
            raise ValueError("a condition's direction must be finite floating-point values")
        hook_name(self.layer, self.hook)  # a bad layer or hook point is an error now
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if self.pool not in ("mean", "last"):
            raise ValueError(f"pool must be 'mean' or 'last', got {self.pool!r}")
        if self.soft is not None and not (
            isinstance(self.soft, int | float) and math.isfinite(self.soft) and self.soft > 0
        ):
            raise ValueError(f"soft must be None or a temperature > 0, got {self.soft!r}")
        json.dumps(self.metadata)  # must be serialisable: fail now, not at save time
        object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def d_model(self) -> int:
        return int(self.direction.shape[0])

    @property
    def hook_point(self) -> str:
        """The full hook name read: ``blocks.{layer}.{hook}``."""
        return hook_name(self.layer, self.hook)

    def __repr__(self) -> str:
        soft = "" if self.soft is None else f", soft={self.soft:g}"
        return (
            f"Condition({self.hook_point}, d_model={self.d_model}, "
            f"threshold={self.threshold:.4g}, pool={self.pool!r}{soft})"
        )

    def __and__(self, gate: GateSpec | Gate) -> Conditional:
        return Conditional(self, Gate.parse(gate))

    __rand__ = __and__

    def validate(self, model: HookedModel) -> None:
        """Raise ``ValueError`` if ``model`` has no such hook point or another width."""
        name = self.hook_point
        if name not in model.hook_dict:
            raise ValueError(
                f"{model.cfg.model_name} has no hook point {name} for the condition "
                f"(it has {model.cfg.n_layers} layers, 0..{model.cfg.n_layers - 1})"
            )
        if self.d_model != model.cfg.d_model:
            raise ValueError(
                f"the condition's direction has d_model {self.d_model}; "
                f"{model.cfg.model_name} has {model.cfg.d_model}"
            )

    # --- the rule ---------------------------------------------------------------------------
    def project(self, pooled: Float[Tensor, "row d_model"]) -> Float[Tensor, " row"]:
        """``pooled · direction`` per row, in float32."""
        return pooled.float() @ self.direction.to(pooled.device, torch.float32)

    def weights(self, projections: Float[Tensor, " row"]) -> Float[Tensor, " row"]:
        """Per row, the factor on α: 1/0 (hard) or the sigmoid of the scaled margin (soft)."""
        margin = projections.float() - self.threshold
        if self.soft is None:
            return (margin > 0).float()
        return torch.sigmoid(margin / self.soft)

    def with_threshold(self, threshold: float) -> Condition:
        return replace(self, threshold=threshold)

    # --- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """A safetensors file (the direction) with JSON metadata; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, **self.describe()}
        save_file(
            {"direction": self.direction.detach().float().cpu().contiguous()},
            str(path),
            metadata={"steerlens": json.dumps(meta)},
        )
        return path

    def describe(self) -> dict[str, Any]:
        """Everything but the direction, as JSON-ready data."""
        return {
            "layer": self.layer,
            "hook": self.hook,
            "threshold": self.threshold,
            "pool": self.pool,
            "soft": self.soft,
            "metadata": self.metadata,
        }

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Condition:
        """Read a file written by ``save``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no condition file at {path}")
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = (f.metadata() or {}).get("steerlens")
            meta = json.loads(raw) if raw else {}
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a steerlens condition file")
            direction = f.get_tensor("direction")
        return cls.from_description(direction, meta)

    @classmethod
    def from_description(cls, direction: Tensor, meta: dict[str, Any]) -> Condition:
        return cls(
            direction,
            int(meta["layer"]),
            float(meta["threshold"]),
            pool=meta.get("pool", "mean"),
            soft=meta.get("soft"),
            hook=meta.get("hook", "hook_resid_post"),
            metadata=dict(meta.get("metadata", {})),
        )


@dataclass(frozen=True)
class Conditional:
    """A condition and a position gate: ``Condition(...) & FirstK(4)``."""

    condition: Condition
    gate: Gate

    def __and__(self, gate: GateSpec | Gate) -> Conditional:
        g = Gate.parse(gate)
        start, stop = max(self.gate.start, g.start), min(self.gate.stop, g.stop)
        return Conditional(self.condition, Gate(start, max(start, stop)))

    __rand__ = __and__


def split_gate(spec: GateSpec | Gate | Condition | Conditional) -> tuple[Gate, Condition | None]:
    """The position gate and the condition (or None) of any gate argument."""
    if isinstance(spec, Condition):
        return Gate.parse("all"), spec
    if isinstance(spec, Conditional):
        return spec.gate, spec.condition
    return Gate.parse(spec), None


def parse_gate_name(text: str) -> tuple[GateSpec, str | None]:
    """A gate by name, as sweeps write it: a position gate (``all``, ``prefill``,
    ``generated``, ``first:K``), a condition (``condition`` or ``condition:NAME``, looked up
    by name), or both joined by ``&`` (``condition&first:4``). Returns the position gate and
    the condition's name (or None)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"a gate name must be a non-empty string, got {text!r}")
    position: GateSpec = "all"
    name: str | None = None
    seen_position = False
    for part in text.split("&"):
        if part == "condition" or part.startswith("condition:"):
            if name is not None:
                raise ValueError(f"gate {text!r} names two conditions")
            name = part.split(":", 1)[1] if ":" in part else "condition"
            if not name:
                raise ValueError(f"gate {text!r}: condition:NAME needs a name")
        else:
            if seen_position:
                raise ValueError(f"gate {text!r} names two position gates")
            position, seen_position = parse_gate(part), True
    return position, name


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
