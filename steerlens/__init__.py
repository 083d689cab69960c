"""steerlens: personalised activation steering of language models, built on TransformerLens.

A flat public API::

    import steerlens as sl
    model = sl.load_model()                      # embedded SmolLM2-135M-Instruct, offline
    vec = sl.SteeringVector({15: v15, 16: v16}, model_name=sl.model_name(model))
    with sl.steering(model, vec, alpha=4.0, gate=sl.FirstK(4)):
        ...
    texts = sl.generate(model, prompts, steering=vec, alpha=[0.0, 2.0, 4.0])
    acts = sl.cache_activations(model, texts, layers=[15, 16], pool="mean")
"""

from __future__ import annotations

import logging

from steerlens import data, evaluation, methods, steerx
from steerlens.core import tokens
from steerlens.core._version import __version__
from steerlens.core.hooks import (
    FirstK,
    Gate,
    SteeringHandle,
    active_steering,
    add_vector_hook,
    hook_name,
    resid_post,
    resid_pre,
    steering,
    steering_hooks,
)
from steerlens.core.models import DEFAULT_MODEL, HookedModel, default_layers, load_model, model_name
from steerlens.core.tokens import encode_prompts, response_masks
from steerlens.core.vectors import SteeringVector
from steerlens.run.cache import cache_activations
from steerlens.run.generation import Generation, generate
from steerlens.run.scoring import continuation_logprobs
from steerlens.run.store import ActivationStore

logging.getLogger(__name__).addHandler(logging.NullHandler())


__all__ = [
    "DEFAULT_MODEL",
    "ActivationStore",
    "FirstK",
    "Gate",
    "Generation",
    "HookedModel",
    "SteeringHandle",
    "SteeringVector",
    "__version__",
    "active_steering",
    "add_vector_hook",
    "cache_activations",
    "continuation_logprobs",
    "data",
    "default_layers",
    "encode_prompts",
    "evaluation",
    "generate",
    "hook_name",
    "load_model",
    "methods",
    "model_name",
    "resid_post",
    "resid_pre",
    "response_masks",
    "steering",
    "steering_hooks",
    "steerx",
    "tokens",
]
