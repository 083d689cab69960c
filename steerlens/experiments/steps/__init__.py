"""The study's steps, one module each (``MODULES``, in the order they run); each registers its
``Step`` in ``steerlens.experiments.steps.base.REGISTRY`` when imported. Adding a step is one
module (a function of the job and one ``register_step`` call) and one line in ``MODULES``
(CONTRIBUTING.md shows it)."""

from __future__ import annotations

import importlib

from steerlens.experiments.steps.base import REGISTRY, Step, get_step, register_step, step_names

__all__ = ["MODULES", "REGISTRY", "Step", "get_step", "register_step", "step_names"]

MODULES = (
    "vectors",
    "dose",
    "side_effects",
    "calibrated",
    "gating",
    "conditional",
    "mmlu",
    "token_effects",
    "steerx",
)

for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")
