"""One registry of the study's steps, the way ``steerlens.methods.registry`` holds methods.

A ``Step`` is everything the study knows about one of its steps: its name, the function that
runs it on the job (writing its files under ``results/`` and returning its summary keys), what
it reads (``StepInputs``: the config fields and the earlier steps whose results it uses, its
fingerprint for resuming), the files and summary keys it writes, how the job reads what it
made back from those files (``provides``: a later step rerun alone needs them), its headline
claims (``claims``: a function of the summary, ``steerlens.experiments.claims``) and its
report section's title. Steps run in the order they are registered; a step registers after
the steps it needs. The runner, the result-file list, the report's step map, the disk fallback,
the headline and the Markdown page's order all come from here; the page's lines for a step
live with the page (``steerlens.reporting.markdown.PAGE_LINES``, keyed by step name: a
lower layer never renders), and a step without any gets a table of its keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from steerlens.experiments.resume import StepInputs

__all__ = ["REGISTRY", "Step", "get_step", "provider", "register_step", "step_names"]

Claims = Callable[[Mapping[str, Any]], list[dict[str, Any] | None]]
"""A step's headline claims: ``claims(summary) -> [claim(...) or None, ...]``."""


@dataclass(frozen=True)
class Step:
    """A study step: ``run(job) -> summary keys``; ``inputs``: what it reads; ``files``: what
    it writes under ``results/``; ``keys``: the summary keys ``run`` may return (a key ending
    in ``*`` stands for every key with that prefix); ``provides``: job attribute -> a function
    of the job reading it back from the step's files; ``claims``: its headline claims from the
    summary; ``title``: its report section's title."""

    name: str
    run: Callable[[Any], dict[str, Any]]
    inputs: StepInputs = field(default_factory=StepInputs)
    files: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    provides: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    claims: Claims | None = None
    title: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"a step's name is an identifier, got {self.name!r}")
        bad = [k for k in self.keys if not k.removesuffix("*").isidentifier()]
        if bad:
            raise ValueError(f"step {self.name!r}: summary keys are identifiers, got {bad}")

    def writes_key(self, key: str) -> bool:
        """Whether ``key`` is among the summary keys this step declares."""
        return any(key.startswith(k[:-1]) if k.endswith("*") else key == k for k in self.keys)


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
    for attr, what in (("provides", "provides what"), ("keys", "declares summary keys of")):
        clash = _clash(step, attr)
        if clash:
            raise ValueError(f"step {step.name!r} {what} other steps: {clash}")
    REGISTRY[step.name] = step
    return step


def _clash(step: Step, attr: str) -> dict[str, str]:
    """``step``'s entries of ``attr`` (``provides`` / ``keys``) another registered step has
    already, with that step's name."""
    mine = set(getattr(step, attr))
    return {
        k: other.name
        for other in REGISTRY.values()
        if other.name != step.name
        for k in getattr(other, attr)
        if k in mine
    }


def get_step(name: str) -> Step:
    """The step called ``name``; a ``ValueError`` lists the names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown step {name!r}; use one of {list(REGISTRY)}")
    return REGISTRY[name]


def provider(what: str) -> Step | None:
    """The registered step that makes the job's ``what`` (``Step.provides``), if any."""
    return next((s for s in REGISTRY.values() if what in s.provides), None)


def step_names() -> tuple[str, ...]:
    return tuple(REGISTRY)
