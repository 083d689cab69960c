"""Evaluation: toxicity, generation metrics, preference accuracy, ground-truth utility, MMLU,
sweep summary tables (``tables``) and planted-truth scoring of token selections
(``token_truth``)."""

from steerlens.evaluation import tables, token_truth
from steerlens.evaluation.mmlu import MMLUResult, mmlu_accuracy, mmlu_prompt
from steerlens.evaluation.preference import (
    CHANCE,
    ground_truth_utility,
    oracle,
    ppa_projection,
    ppa_under_steering,
    score_predictions,
    toxicity_only,
)
from steerlens.evaluation.stats import Estimate, bootstrap_interval, estimate
from steerlens.evaluation.toxicity import ProfanityCheckScorer, ToxicityScorer, get_scorer

__all__ = [
    "CHANCE",
    "Estimate",
    "MMLUResult",
    "ProfanityCheckScorer",
    "ToxicityScorer",
    "bootstrap_interval",
    "estimate",
    "get_scorer",
    "ground_truth_utility",
    "mmlu_accuracy",
    "mmlu_prompt",
    "oracle",
    "ppa_projection",
    "ppa_under_steering",
    "score_predictions",
    "tables",
    "token_truth",
    "toxicity_only",
]
