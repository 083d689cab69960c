"""Steering-vector construction methods."""

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

__all__ = [
    "BradleyTerry",
    "PairActivations",
    "bradley_terry",
    "dislike_weighted",
    "mean_difference",
    "pair_activations",
    "population",
    "shrinkage_weight",
]
