"""Serving: each request steered by its own vector inside vLLM (``steerlens serve``,
``sl.generate(..., engine="vllm")``).

* ``spec``: a request's steering keys (``request_args`` builds them for a client);
* ``plan``: the steering of one step's flattened tokens (pure torch, the same rule as
  ``steering_hooks``);
* ``store``: the server's vectors, checked against the served model, in a bounded LRU;
* ``worker`` / ``engine`` / ``server`` / ``middleware`` / ``generation``: the vLLM side.

A layer above ``core`` and ``run`` that nothing below imports; vLLM is imported only where an
engine or server is made (the serve environment: ``make test-serve``).
"""

from __future__ import annotations

from steerlens.serve.plan import RequestSteering, StepPlan, StepSteering, plan_step
from steerlens.serve.spec import KEYS, SpecError, SteerSpec, request_args
from steerlens.serve.store import ServedModel, VectorStore

__all__ = [
    "KEYS",
    "RequestSteering",
    "ServedModel",
    "SpecError",
    "SteerSpec",
    "StepPlan",
    "StepSteering",
    "VectorStore",
    "plan_step",
    "request_args",
]
