"""Steering-vector construction methods."""

from steerlens.methods.bipo import BiPOConfig, bipo
from steerlens.methods.caa import mean_difference
from steerlens.methods.personal import (
    BradleyTerry,
    PairActivations,
    bradley_terry,
    dislike_weighted,
    pair_activations,
    population,
    shrinkage_weight,
)
from steerlens.methods.sae import sae_vector
from steerlens.methods.stylevector import context_vector, generic_responses, style_vector

__all__ = [
    "BiPOConfig",
    "BradleyTerry",
    "PairActivations",
    "bipo",
    "bradley_terry",
    "context_vector",
    "dislike_weighted",
    "generic_responses",
    "mean_difference",
    "pair_activations",
    "population",
    "sae_vector",
    "shrinkage_weight",
    "style_vector",
]
