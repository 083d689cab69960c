"""The simulated set's configuration (``SimulationConfig``) and its fixed vocabularies: model
names and conversation types (see ``steerlens.experiments.simulate``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerlens.data.prompts import PROMPTS

__all__ = ["CONVERSATION_TYPE", "MODEL_NAMES", "SimulationConfig"]

# The names of the simulated "models": each conversation assigns them to the four styles in a
# fresh random order, so a name says nothing about a response's style (PRISM's names identify
# models, not styles).
MODEL_NAMES = ("sim-model-a", "sim-model-b", "sim-model-c", "sim-model-d")


CONVERSATION_TYPE = {
    "benign_control": "unguided",
    "context_dependent": "values guided",
    "harmful_borderline": "controversy guided",
    "safe_sensitive": "controversy guided",
}


@dataclass
class SimulationConfig:
    """Sizes and knobs of the simulated set (defaults: the shipped demo set)."""

    seed: int = 0
    model: str = "smollm2-135m-instruct"
    prompts_per_category: int = 30
    n_users: int = 48
    # 20 turn-0 conversations a user resolve personalised vs population PPA on the shipped set;
    # ``--thin`` gives PRISM's ~6 (about five conversations a user on real PRISM).
    conversations_per_user: int = 20
    later_turn_share: float = 0.5
    # Survey fields are a noisy signal of the group: a self-description from another group
    # with this probability, and stated preferences with Gaussian noise of this s.d. (points).
    survey_swap: float = 0.25
    stated_noise: float = 15.0
    max_new_tokens: int = 40
    target_oracle_accuracy: float = 0.8
    weight_noise: float = 0.25
    batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.prompts_per_category <= len(PROMPTS["benign_control"]):
            raise ValueError(f"prompts_per_category must be 1..{len(PROMPTS['benign_control'])}")
        if self.n_users < 3:
            raise ValueError("n_users must be >= 3 (one per group)")
        n_prompts = 4 * self.prompts_per_category
        if not 1 <= self.conversations_per_user <= n_prompts:
            raise ValueError(f"conversations_per_user must be 1..{n_prompts}")
        if not 0.5 < self.target_oracle_accuracy < 1.0:
            raise ValueError("target_oracle_accuracy must be in (0.5, 1)")
        if not 0.0 <= self.later_turn_share <= 1.0:
            raise ValueError("later_turn_share must be in [0, 1]")
        if not 0.0 <= self.survey_swap <= 1.0 or self.stated_noise < 0:
            raise ValueError("survey_swap must be in [0, 1] and stated_noise >= 0")
