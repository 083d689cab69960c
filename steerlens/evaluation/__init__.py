"""Evaluation: toxicity scorers and response attributes (metrics and MMLU scoring build on these)."""

from steerlens.evaluation.toxicity import ProfanityCheckScorer, ToxicityScorer, get_scorer

__all__ = ["ProfanityCheckScorer", "ToxicityScorer", "get_scorer"]
