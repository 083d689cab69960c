"""The vectors a sweep steers with: built from the registry, saved and loaded, and their
α calibrated to KL budgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerlens.core.conditions import Condition
from steerlens.core.models import HookedModel
from steerlens.core.tokens import tokenize
from steerlens.core.vectors import SteeringVector
from steerlens.experiments.sweep.grid import VectorTable
from steerlens.methods import registry
from steerlens.methods.personal import pair_activations, population
from steerlens.methods.registry import MethodOptions
from steerlens.run.divergence import (
    calibrate_alpha,
    calibration_key,
    reference_logprobs,
    texts_key,
)


def build_rescaled_vectors(
    model: HookedModel,
    train: Sequence[Any],
    methods: Sequence[str],
    users: Sequence[str],
    *,
    layers: list[int] | None = None,
    options: MethodOptions | None = None,
    batch_size: int = 16,
    progress_bar: bool = True,
) -> dict[str, SteeringVector | dict[str, SteeringVector]]:
    """The methods' vectors (``steerlens.methods.registry``) from one pair-activation table of
    ``train``; per-user vectors are rescaled to the population vector's norms."""
    pa = pair_activations(
        model, list(train), layers, batch_size=batch_size, progress_bar=progress_bar
    )
    built = registry.build_vectors(pa, methods, users, options)
    pop = built.get("population")
    norms = (pop if isinstance(pop, SteeringVector) else population(pa)).norms()
    return {
        name: {u: v.rescaled(norms) for u, v in vec.items()} if isinstance(vec, dict) else vec
        for name, vec in built.items()
    }


def calibrate_table(
    model: HookedModel,
    vectors: VectorTable,
    budgets: Sequence[float],
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    starts: Mapping[float, float] | None = None,
) -> CalibrationTable:
    """``(method, user, budget) -> α`` for every vector and nonzero KL budget: the α whose mean
    per-token KL on ``texts`` meets the budget (``calibrate_alpha``, all of a method's users in
    the same batched passes, every method's too; cached in each vector's metadata). A method
    with one vector for everyone is keyed by user ``"*"``; look-ups for any user fall back to
    it. ``starts``: per budget, the α its search starts from (e.g. the α the budget was read
    at: vectors rescaled to a common norm land near it), else 1. The table's ``found`` holds
    each search's ``{"alpha", "kl", "reached", ...}``."""
    keys = [
        (method, user, vec)
        for method, entry in vectors.items()
        for user, vec in ({"*": entry} if isinstance(entry, SteeringVector) else entry).items()
    ]
    out = CalibrationTable()
    reference = None  # the texts' unsteered pass, once for every budget
    fingerprint = texts_key(tokenize(model, list(texts)))
    for b in budgets:  # every method's vectors in the same batched passes
        if float(b) == 0.0:
            continue
        if reference is None:
            reference = reference_logprobs(model, texts, batch_size=batch_size)
        start = float((starts or {}).get(float(b), 1.0))
        alphas = calibrate_alpha(
            model,
            [v for _, _, v in keys],
            texts,
            float(b),
            start=start,
            batch_size=batch_size,
            reference=reference,
        )
        key = calibration_key(float(b), fingerprint, start=start)
        for (m, u, vec), a in zip(keys, alphas, strict=True):
            out[(m, u, float(b))] = a
            out.found[(m, u, float(b))] = dict(vec.metadata["kl_alpha"][key])
    return out


class CalibrationTable(dict):  # type: ignore[type-arg]
    """Look-ups of (method, user, budget) fall back to (method, "*", budget); ``found`` holds
    each search's result (``{"alpha", "kl", "reached", "n_texts"}``) under the same keys."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.found: dict[tuple[str, str, float], dict[str, Any]] = {}

    def __missing__(self, key: tuple[str, str, float]) -> float:
        m, _, b = key
        if (m, "*", b) in self:
            return float(self[(m, "*", b)])
        raise KeyError(key)


def save_vectors(vectors: VectorTable, folder: Path) -> None:
    for method, entry in vectors.items():
        if isinstance(entry, SteeringVector):
            entry.save(folder / f"{method}.safetensors")
        else:
            (folder / method).mkdir(parents=True, exist_ok=True)
            for user, vec in entry.items():
                vec.save(folder / method / f"{user}.safetensors")


def save_conditions(conditions: Mapping[str, Condition], folder: Path) -> None:
    """Each condition as ``folder/conditions/NAME.safetensors``, beside the vectors."""
    for name, cond in conditions.items():
        cond.save(folder / "conditions" / f"{name}.safetensors")


def load_conditions(folder: Path) -> dict[str, Condition]:
    """The conditions ``save_conditions`` wrote under ``folder`` (none: empty)."""
    return {
        f.stem: Condition.load(f) for f in sorted((folder / "conditions").glob("*.safetensors"))
    }


def load_vectors(folder: Path, methods: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in methods:
        single = folder / f"{method}.safetensors"
        if single.exists():
            out[method] = SteeringVector.load(single)
        elif (folder / method).is_dir():
            out[method] = {
                f.stem: SteeringVector.load(f)
                for f in sorted((folder / method).glob("*.safetensors"))
            }
        else:
            raise FileNotFoundError(f"no vectors for {method!r} under {folder}")
    return out
