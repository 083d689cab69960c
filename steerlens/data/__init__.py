"""Datasets: PRISM (real or simulated), prompt categories and MMLU.

``load_prism("demo")`` is the shipped *simulated* PRISM-format set (see
``steerlens.experiments.simulate``); ``load_prism("hf")`` or a folder loads the real PRISM.
"""

from steerlens.data.categories import agreement, categorize, load_category_map
from steerlens.data.mmlu import MMLUItem, load_mmlu, neutral_texts
from steerlens.data.prism import DEMO_DIR, PrismDataset, load_prism
from steerlens.data.prompts import CATEGORIES
from steerlens.data.schema import (
    Conversation,
    PreferencePair,
    PrismFormatError,
    Problem,
    User,
    Utterance,
)

__all__ = [
    "CATEGORIES",
    "DEMO_DIR",
    "Conversation",
    "MMLUItem",
    "PreferencePair",
    "PrismDataset",
    "PrismFormatError",
    "Problem",
    "User",
    "Utterance",
    "agreement",
    "categorize",
    "load_category_map",
    "load_mmlu",
    "load_prism",
    "neutral_texts",
]
