"""The server's vectors: ``<dir>/<name>.safetensors`` files written by steerlens
(``SteeringVector.save``, conditions included; ``<dir>/conditions/<name>.safetensors`` by
``Condition.save``), loaded on first use and kept in a bounded LRU. Only safetensors are
read (never a pickle); a name is a plain file name, and a file that resolves outside the
folder (a symlink) is refused. Each vector is checked against the served model's name,
``d_model``, layer count and hook point before any request uses it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlens.core.conditions import Condition, hook_order
from steerlens.core.hook_names import hook_name
from steerlens.core.vectors import SteeringVector
from steerlens.serve.spec import SpecError, SteerSpec, check_name

__all__ = ["ServedModel", "VectorStore"]


@dataclass(frozen=True)
class ServedModel:
    """What a vector must fit: the served model's name (as vectors record it), width, depth
    and the hook points the worker steers."""

    name: str
    d_model: int
    n_layers: int
    hooks: tuple[str, ...] = ("hook_resid_post",)
    condition_hooks: tuple[str, ...] = ("hook_resid_post", "hook_resid_pre")
    conditions: bool = True
    """Whether conditions are served (the server runs chunked prefill otherwise)."""


class VectorStore:
    """Vectors and conditions by name from ``folder``, at most ``max_loaded`` of each kept."""

    def __init__(self, folder: str | Path, model: ServedModel, max_loaded: int = 256) -> None:
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no vector folder at {self.folder}")
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1, got {max_loaded}")
        self.model, self.max_loaded = model, max_loaded
        # keyed by (name, mtime, size): a file saved again is read again
        self._vectors: OrderedDict[tuple[str, int, int], SteeringVector] = OrderedDict()
        self._conditions: OrderedDict[tuple[str, int, int], Condition] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vectors)

    def names(self) -> list[str]:
        """Every vector the folder holds (by file name)."""
        return sorted(p.stem for p in self.folder.glob("*.safetensors"))

    def _file(
        self, folder: Path, name: str, field: str, what: str
    ) -> tuple[Path, tuple[str, int, int]]:
        """The file of ``name`` and its cache key; names and messages never show the folder."""
        check_name(name, field)
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise SpecError(f"no {what} named {name!r} on this server", field=field, status=404)
        if not path.resolve().is_relative_to(self.folder):
            raise SpecError(f"{what} {name!r} is a file outside the server's folder", field=field)
        stat = path.stat()
        return path, (name, stat.st_mtime_ns, stat.st_size)

    def vector(self, name: str) -> SteeringVector:
        """The vector ``name`` (loaded once, checked against the served model)."""
        return self._cached(  # type: ignore[no-any-return]
            self._vectors, self.folder, name, "vector", SteeringVector.load, self._check
        )

    def condition(self, name: str) -> Condition:
        """The condition ``name`` from ``<folder>/conditions/``."""
        return self._cached(  # type: ignore[no-any-return]
            self._conditions,
            self.folder / "conditions",
            name,
            "condition",
            Condition.load,
            self._check_condition,
        )

    def _cached(
        self,
        cache: OrderedDict[Any, Any],
        folder: Path,
        name: str,
        what: str,
        load: Callable[[Path], Any],
        check: Callable[[str, Any], None],
    ) -> Any:
        """``name``'s object from ``cache``, else read (safetensors only), checked and kept,
        the least recently used going beyond ``max_loaded``."""
        field = "steer_user" if what == "vector" else "steer_condition"
        path, key = self._file(folder, name, field, what)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        try:
            value = load(path)
        except Exception as e:  # a malformed file (safetensors raises its own error type)
            raise SpecError(f"{what} {name!r} cannot be read: {e}", field=field) from None
        check(name, value)
        cache[key] = value
        while len(cache) > self.max_loaded:
            cache.popitem(last=False)
        return value

    def steering(self, spec: SteerSpec) -> tuple[SteeringVector, Condition | None]:
        """The vector and condition a steered spec names, checked as a pair: the condition is
        read at a point the worker reads (``resid_post`` / ``resid_pre``), at or before the
        vector's earliest steered point, and only where the server serves conditions."""
        assert spec.user is not None
        vector = self.vector(spec.user)
        if spec.condition == "own":
            condition = vector.condition
        elif spec.condition == "none":
            condition = None
        else:
            condition = self.condition(spec.condition)
        if condition is None:
            return vector, None
        field = "steer_condition" if spec.condition not in ("own", "none") else "steer_user"
        if not self.model.conditions:
            raise SpecError(
                "this server runs without conditions (steerlens serve --no-conditions): send "
                'steer_condition "none" or a vector without one',
                field=field,
            )
        if condition.hook not in self.model.condition_hooks:
            raise SpecError(
                f"a condition read at {condition.hook_point} cannot be served; read it at "
                f"{list(self.model.condition_hooks)}",
                field=field,
            )
        first = min(vector.layers, key=lambda layer: hook_order(layer, vector.hook))
        if hook_order(condition.layer, condition.hook) > hook_order(first, vector.hook):
            raise SpecError(
                f"the condition is read at {condition.hook_point}, after "
                f"{hook_name(first, vector.hook)} which it gates",
                field=field,
            )
        return vector, condition

    def _check(self, name: str, v: SteeringVector) -> None:
        m = self.model
        problems = []
        if v.model_name is not None and v.model_name != m.name:
            problems.append(f"it was built on {v.model_name!r}, the server runs {m.name!r}")
        if v.d_model != m.d_model:
            problems.append(f"its d_model is {v.d_model}, the model's {m.d_model}")
        bad = [layer for layer in v.layers if not 0 <= layer < m.n_layers]
        if bad:
            problems.append(f"its layers {bad} are not among the model's 0..{m.n_layers - 1}")
        if v.hook not in m.hooks:
            problems.append(f"it steers {v.hook}, the server steers {list(m.hooks)}")
        if problems:
            raise SpecError(
                f"vector {name!r} does not fit: " + "; ".join(problems), field="steer_user"
            )
        if v.condition is not None:
            self._check_condition(name, v.condition)
        if not v.layers:
            raise SpecError(f"vector {name!r} has no layers", field="steer_user")

    def _check_condition(self, name: str, c: Condition) -> None:
        m = self.model
        if c.d_model != m.d_model or not 0 <= c.layer < m.n_layers:
            raise SpecError(
                f"condition of {name!r} reads d_model {c.d_model} at layer {c.layer}; the model "
                f"has d_model {m.d_model} and layers 0..{m.n_layers - 1}",
                field="steer_condition",
            )
