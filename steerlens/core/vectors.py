"""``SteeringVector``: directions keyed by layer, with algebra, validation and files.

Files are safetensors (one ``layer.{l}`` tensor per layer) with JSON metadata: model, hook,
layers, method, normalisation and free-form provenance. The GGUF control-vector format of
llama.cpp and repeng is supported by ``to_gguf`` / ``from_gguf`` (see ``steerlens.core.gguf_io``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.conditions import Condition
from steerlens.core.hook_names import HOOK_POINTS
from steerlens.core.lm_eval_io import read_steer_file, write_steer_file
from steerlens.core.models import HookedModel

__all__ = ["SteeringVector"]

logger = logging.getLogger(__name__)

_FORMAT = "steerlens.vector/1"


@dataclass
class SteeringVector:
    """A steering direction per layer.

    Args:
        directions: ``{layer: Float[Tensor, "d_model"]}``; layer ``l`` is the output of block
            ``l`` (``blocks.{l}.hook_resid_post``) unless ``hook`` says otherwise.
        model_name: the model the vector was built on (checked by ``validate``), or None.
        hook: ``"hook_resid_post"`` (default), ``"hook_resid_pre"`` or ``"hook_resid_mid"``.
        method: how it was built (``"caa"``, ``"bradley_terry"``, ``"manual"``, ...).
        metadata: JSON-serialisable provenance (data, users, normalisation, ...).
        condition: a ``Condition`` that decides, per prompt, whether the vector steers it
            (``vector.conditioned(c)``); ``steering()`` and ``generate`` apply it as a gate
            would. Saved in the same file; lm-eval and GGUF exports cannot hold it.
    """

    directions: dict[int, Float[Tensor, " d_model"]]
    model_name: str | None = None
    hook: str = "hook_resid_post"
    method: str = "manual"
    metadata: dict[str, Any] = field(default_factory=dict)
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.directions, Mapping) or not self.directions:
            raise ValueError("a SteeringVector needs at least one layer direction")
        if self.hook not in HOOK_POINTS:
            raise ValueError(f"hook must be one of {HOOK_POINTS}, got {self.hook!r}")
        clean: dict[int, Tensor] = {}
        d_model = None
        for layer, vec in self.directions.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"layers must be non-negative ints, got {layer!r}")
            if not isinstance(vec, Tensor):
                raise TypeError(f"layer {layer}: direction must be a torch.Tensor")
            if vec.ndim != 1:
                raise ValueError(f"layer {layer}: direction must be 1-D, got {tuple(vec.shape)}")
            if not vec.is_floating_point():
                raise TypeError(f"layer {layer}: direction must be floating point, got {vec.dtype}")
            if d_model is None:
                d_model = vec.shape[0]
            elif vec.shape[0] != d_model:
                raise ValueError(
                    f"layer {layer}: d_model {vec.shape[0]} differs from the others ({d_model})"
                )
            clean[int(layer)] = vec
        self.directions = dict(sorted(clean.items()))
        json.dumps(self.metadata)  # must be serialisable: fail now, not at save time
        if self.condition is not None:
            if not isinstance(self.condition, Condition):
                raise TypeError(f"condition must be a Condition, got {type(self.condition)}")
            if self.condition.d_model != d_model:
                raise ValueError(
                    f"the condition's direction has d_model {self.condition.d_model}, "
                    f"the vector {d_model}"
                )

    def conditioned(self, condition: Condition | None) -> SteeringVector:
        """This vector steering only the prompts ``condition`` selects (None: every prompt)."""
        return replace(self, condition=condition)

    # --- shape ----------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.directions.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.directions.values())).device

    def norms(self) -> dict[int, float]:
        """L2 norm of each layer's direction."""
        return {layer: float(v.float().norm()) for layer, v in self.directions.items()}

    def as_tensor(self) -> Float[Tensor, "layer d_model"]:
        """Directions stacked in layer order."""
        return torch.stack(list(self.directions.values()))

    @classmethod
    def from_tensor(
        cls, tensor: Float[Tensor, "layer d_model"], layers: Iterable[int], **kwargs: Any
    ) -> SteeringVector:
        layer_list = list(layers)
        if tensor.ndim != 2 or tensor.shape[0] != len(layer_list):
            raise ValueError(
                f"tensor of shape {tuple(tensor.shape)} does not fit {len(layer_list)} layers"
            )
        return cls({layer: tensor[i] for i, layer in enumerate(layer_list)}, **kwargs)

    # --- algebra --------------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hook != self.hook:
            raise ValueError(f"cannot combine vectors on {self.hook} and {other.hook}")
        if other.d_model != self.d_model:
            raise ValueError(f"d_model differs: {self.d_model} vs {other.d_model}")
        if self.model_name and other.model_name and self.model_name != other.model_name:
            raise ValueError(
                f"vectors of different models: {self.model_name} vs {other.model_name}"
            )
        out = {layer: v.clone() for layer, v in self.directions.items()}
        for layer, v in other.directions.items():
            v = v.to(self.device, self.dtype)
            out[layer] = out[layer] + sign * v if layer in out else sign * v
        return replace(
            self,
            directions=out,
            model_name=self.model_name or other.model_name,
            method="combined",
            metadata={"combined": [self.method, other.method]},
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scale: float) -> SteeringVector:
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            return NotImplemented
        return replace(self, directions={k: v * scale for k, v in self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> SteeringVector:
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            return NotImplemented
        if scale == 0:
            raise ZeroDivisionError("cannot divide a SteeringVector by zero")
        return self * (1.0 / scale)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        """Like ``Tensor.to``: device and/or dtype, applied to every direction."""
        return replace(
            self, directions={k: v.to(*args, **kwargs) for k, v in self.directions.items()}
        )

    def normalized(self) -> SteeringVector:
        """Each layer's direction scaled to unit L2 norm (a zero direction is an error)."""
        out = {}
        for layer, v in self.directions.items():
            n = v.float().norm()
            if n == 0:
                raise ValueError(f"layer {layer}: cannot normalise a zero direction")
            out[layer] = (v.float() / n).to(v.dtype)
        return replace(self, directions=out, metadata={**self.metadata, "normalized": True})

    def rescaled(self, norms: Mapping[int, float]) -> SteeringVector:
        """Each layer scaled to the given L2 norm (a zero direction stays zero), so one α
        means the same push for vectors of different methods (e.g. the population norms)."""
        missing = [layer for layer in self.directions if layer not in norms]
        if missing:
            raise ValueError(f"no target norm for layers {missing}")
        out = {}
        for layer, v in self.directions.items():
            n = float(v.float().norm())
            out[layer] = (v.float() * (norms[layer] / n)).to(v.dtype) if n > 0 else v
        return replace(self, directions=out, metadata={**self.metadata, "rescaled": True})

    def select(self, layers: Iterable[int]) -> SteeringVector:
        """Only the given layers (each must be present)."""
        wanted = list(layers)
        missing = [layer for layer in wanted if layer not in self.directions]
        if missing:
            raise ValueError(f"layers {missing} not in this vector (it has {self.layers})")
        return replace(self, directions={layer: self.directions[layer] for layer in wanted})

    # --- validation -----------------------------------------------------------------------
    def validate(self, model: HookedModel) -> None:
        """Raise ``ValueError`` naming both sides if this vector does not fit ``model``."""
        name = str(model.cfg.model_name)
        if self.d_model != model.cfg.d_model:
            raise ValueError(
                f"vector d_model {self.d_model} (built on {self.model_name}) does not fit "
                f"{name} with d_model {model.cfg.d_model}"
            )
        bad = [layer for layer in self.layers if layer >= model.cfg.n_layers]
        if bad:
            raise ValueError(
                f"vector layers {bad} are out of range for {name} "
                f"(layers 0..{model.cfg.n_layers - 1})"
            )
        if self.model_name is not None and self.model_name != name:
            raise ValueError(
                f"vector was built on {self.model_name!r} but the model is {name!r} "
                "(set model_name=None to apply it anyway)"
            )
        for layer, v in self.directions.items():
            if not torch.isfinite(v).all():
                raise ValueError(f"layer {layer}: direction has NaN or inf values")

    # --- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a safetensors file with JSON metadata; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{k}": v.detach().cpu().contiguous() for k, v in self.directions.items()}
        meta = {
            "format": _FORMAT,
            "model_name": self.model_name,
            "hook": self.hook,
            "layers": self.layers,
            "method": self.method,
            "metadata": self.metadata,
        }
        if self.condition is not None:
            tensors["condition.direction"] = self.condition.direction.detach().cpu().contiguous()
            meta["condition"] = self.condition.describe()
        save_file(tensors, str(path), metadata={"steerlens": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SteeringVector:
        """Read a file written by ``save``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no steering vector file at {path}")
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = (f.metadata() or {}).get("steerlens")
            if raw is None:
                raise ValueError(f"{path} is not a steerlens vector file (no steerlens metadata)")
            meta = json.loads(raw)
            names = list(f.keys())
            directions = {
                int(k.split(".", 1)[1]): f.get_tensor(k) for k in names if k[:6] == "layer."
            }
            cond_dir = f.get_tensor("condition.direction") if "condition" in meta else None
        if sorted(directions) != sorted(meta["layers"]):
            raise ValueError(f"{path}: tensors {sorted(directions)} do not match metadata layers")
        return cls(
            directions,
            model_name=meta.get("model_name"),
            hook=meta.get("hook", "hook_resid_post"),
            method=meta.get("method", "manual"),
            metadata=meta.get("metadata", {}),
            condition=None
            if cond_dir is None
            else Condition.from_description(cond_dir, meta["condition"]),
        )

    def _unconditional_export(self, what: str) -> None:
        """Warn that ``what`` cannot hold this vector's condition (it exports the vector)."""
        if self.condition is not None:
            note = (
                f"{what} cannot express a condition: exporting the unconditional vector only "
                f"({self.condition!r} is dropped; every prompt will be steered)"
            )
            logger.warning(note)
            warnings.warn(note, UserWarning, stacklevel=3)

    def to_gguf(self, path: str | Path, model_hint: str | None = None) -> Path:
        """Export as a llama.cpp / repeng GGUF control vector (``direction.{l}``)."""
        from steerlens.core.gguf_io import write_control_vector

        self._unconditional_export("a GGUF control vector")
        if self.hook != "hook_resid_post":
            raise ValueError(
                f"GGUF control vectors act on block outputs (hook_resid_post), not {self.hook}"
            )
        return write_control_vector(
            path,
            {k: v.detach().float().cpu().numpy() for k, v in self.directions.items()},
            model_hint or self.model_name or "unknown",
        )

    def to_lm_eval(self, path: str | Path, alpha: float = 1.0) -> Path:
        """Write lm-evaluation-harness's steering file (``lm_eval --model steered
        --model_args pretrained=...,steer_path=PATH``): per layer, the decoder layer output
        as hookpoint, action ``add``, coefficient ``alpha`` (``steerlens.core.lm_eval_io``).
        A condition is not exported (a warning says so)."""
        self._unconditional_export("lm-evaluation-harness's steering file")
        return write_steer_file(path, self.directions, self.hook, alpha)

    @classmethod
    def from_lm_eval(cls, path: str | Path, model_name: str | None = None) -> SteeringVector:
        """Import an lm-evaluation-harness ``add`` steering file (coefficient folded into the
        directions); read with ``torch.load(weights_only=True)``, never unpickling objects."""
        return cls(
            read_steer_file(path),
            model_name=model_name,
            method="lm-eval",
            metadata={"source": str(path)},
        )

    @classmethod
    def from_gguf(cls, path: str | Path, model_name: str | None = None) -> SteeringVector:
        """Import a GGUF control vector; ``model_name`` defaults to None (its hint is metadata)."""
        from steerlens.core.gguf_io import read_control_vector

        hint, arrays = read_control_vector(path)
        return cls(
            {k: torch.from_numpy(a.copy()).float() for k, a in arrays.items()},
            model_name=model_name,
            method="gguf",
            metadata={"model_hint": hint, "source": str(path)},
        )
