"""One registry of the study's steps, the way ``steerlens.methods.registry`` holds methods.

A ``Step`` is its name, the function that runs it on the job (writing its files under
``results/`` and returning its summary keys), what it reads (``StepInputs``: the config
fields and the earlier steps whose results it uses, its fingerprint for resuming) and the
files it writes (the report draws them only once the step is done). Steps run in the order
they are registered; a step registers after the steps it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from steerlens.experiments.resume import StepInputs

__all__ = ["REGISTRY", "Step", "get_step", "register_step", "step_names"]


@dataclass(frozen=True)
class Step:
    """A study step: ``run(job) -> summary keys``; ``inputs``: what it reads; ``files``: what
    it writes under ``results/``."""

    name: str
    run: Callable[[Any], dict[str, Any]]
    inputs: StepInputs = field(default_factory=StepInputs)
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"a step's name is an identifier, got {self.name!r}")


REGISTRY: dict[str, Step] = {}
"""Every registered step, in the order the study runs them."""


def register_step(step: Step) -> Step:
    """Add ``step`` after the registered ones (its module re-imported: replaced in place)."""
    old = REGISTRY.get(step.name)
    if old is not None and old.run.__module__ != step.run.__module__:
        raise ValueError(f"a step named {step.name!r} is registered already")
    missing = [n for n in step.inputs.needs if n not in REGISTRY or n == step.name]
    if missing:
        raise ValueError(f"step {step.name!r} needs {missing}: register them before it")
    REGISTRY[step.name] = step
    return step


def get_step(name: str) -> Step:
    """The step called ``name``; a ``ValueError`` lists the names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown step {name!r}; use one of {list(REGISTRY)}")
    return REGISTRY[name]


def step_names() -> tuple[str, ...]:
    return tuple(REGISTRY)
