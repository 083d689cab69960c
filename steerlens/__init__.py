"""steerlens: personalised activation steering of language models, built on TransformerLens.

A flat public API::

    import steerlens as sl
    model = sl.load_model()                      # embedded SmolLM2-135M-Instruct, offline
    vec = sl.SteeringVector({15: v15, 16: v16}, model_name=sl.model_name(model))
    with sl.steering(model, vec, alpha=4.0, gate=sl.FirstK(4)):
        ...
    texts = sl.generate(model, prompts, steering=vec, alpha=[0.0, 2.0, 4.0])
    acts = sl.cache_activations(model, texts, layers=[15, 16], pool="mean")
    fig = sl.plots.dose_response(cells)          # plotly figures of tidy results

Names are imported on first use (``import steerlens`` loads neither torch nor
TransformerLens); ``from steerlens import X`` works as for any module.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from steerlens.core._lazy import lazy_namespace
from steerlens.core._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

_HOOKS = "steerlens.core.hooks"
_MODULES = {
    "data": "steerlens.data",
    "evaluation": "steerlens.evaluation",
    "explore": "steerlens.explore",
    "methods": "steerlens.methods",
    "plots": "steerlens.plots",
    "serve": "steerlens.serve",
    "steerx": "steerlens.steerx",
    "tokens": "steerlens.core.tokens",
}
_NAMES = {
    # core
    "Condition": "steerlens.core.conditions",
    "FirstK": _HOOKS,
    "Gate": _HOOKS,
    "SteeringHandle": _HOOKS,
    "active_steering": _HOOKS,
    "add_vector_hook": _HOOKS,
    "hook_name": _HOOKS,
    "resid_post": _HOOKS,
    "resid_pre": _HOOKS,
    "steering": _HOOKS,
    "steering_hooks": _HOOKS,
    "DEFAULT_MODEL": "steerlens.core.models",
    "HookedModel": "steerlens.core.models",
    "default_layers": "steerlens.core.models",
    "load_model": "steerlens.core.models",
    "model_name": "steerlens.core.models",
    "encode_prompts": "steerlens.core.tokens",
    "response_masks": "steerlens.core.tokens",
    "SteeringVector": "steerlens.core.vectors",
    # running the model
    "cache_activations": "steerlens.run.cache",
    "Generation": "steerlens.run.generation",
    "generate": "steerlens.run.generation",
    "continuation_logprobs": "steerlens.run.scoring",
    "calibrate_alpha": "steerlens.run.divergence",
    "steering_divergence": "steerlens.run.divergence",
    "ActivationStore": "steerlens.run.store",
}

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES, globals(), _MODULES)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from steerlens import data, evaluation, explore, methods, plots, serve, steerx
    from steerlens.core import tokens
    from steerlens.core.conditions import Condition
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
    from steerlens.core.models import (
        DEFAULT_MODEL,
        HookedModel,
        default_layers,
        load_model,
        model_name,
    )
    from steerlens.core.tokens import encode_prompts, response_masks
    from steerlens.core.vectors import SteeringVector
    from steerlens.run.cache import cache_activations
    from steerlens.run.divergence import calibrate_alpha, steering_divergence
    from steerlens.run.generation import Generation, generate
    from steerlens.run.scoring import continuation_logprobs
    from steerlens.run.store import ActivationStore

# the public names (each in _NAMES or _MODULES; a test checks the two agree)
__all__ = [
    "DEFAULT_MODEL",
    "ActivationStore",
    "Condition",
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
    "calibrate_alpha",
    "continuation_logprobs",
    "data",
    "default_layers",
    "encode_prompts",
    "evaluation",
    "explore",
    "generate",
    "hook_name",
    "load_model",
    "methods",
    "model_name",
    "plots",
    "resid_post",
    "resid_pre",
    "response_masks",
    "serve",
    "steering",
    "steering_divergence",
    "steering_hooks",
    "steerx",
    "tokens",
]
