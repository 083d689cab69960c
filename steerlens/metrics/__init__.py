"""Metrics: toxicity, text metrics, preference accuracy, ground-truth utility, MMLU, response
attributes, bootstrap statistics, sweep summary tables (``summaries``) and planted-truth
scoring of token selections (``token_truth``). ``sl.evaluation`` is the same namespace."""

from steerlens.metrics import summaries, token_truth
from steerlens.metrics.mmlu import MMLUResult, mmlu_accuracy, mmlu_by_alpha, mmlu_prompt
from steerlens.metrics.preference import (
    CHANCE,
    ground_truth_utility,
    oracle,
    ppa_projection,
    ppa_under_steering,
    score_predictions,
    toxicity_only,
    utility_gain,
)
from steerlens.metrics.stats import Estimate, bootstrap_interval, estimate
from steerlens.metrics.toxicity import ProfanityCheckScorer, ToxicityScorer, get_scorer

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
    "mmlu_by_alpha",
    "mmlu_prompt",
    "oracle",
    "ppa_projection",
    "ppa_under_steering",
    "score_predictions",
    "summaries",
    "token_truth",
    "toxicity_only",
    "utility_gain",
]
