"""The study's configuration (``DemoConfig``, also ``StudyConfig``) and its quick preset."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Literal, TypeVar

from steerlens.experiments.conditional import MIN_NEUTRAL_SELECT
from steerlens.experiments.config import RunSection, as_section
from steerlens.experiments.token_effects import TokenEffectsConfig
from steerlens.methods.registry import (
    BACKBONES,
    MethodOptions,
    available_backbones,
    method_names,
)
from steerlens.methods.sae_train import require_sae_lens

logger = logging.getLogger(__name__)

PERSONAL = "dislike-weighted"  # the personalised method the summary's headline keys report


def _step_names() -> tuple[str, ...]:
    """The registered steps (the registry imports this module: read it on use)."""
    from steerlens.experiments.steps import step_names

    return step_names()


def _quick_preset() -> dict[str, Any]:
    """``DemoConfig(quick=True)``: every step small (the values a caller did not set)."""
    return {
        # held-out prompts whose user and text fall on one side: 24 give each side >= 5 users
        "n_prompts": 24,
        "max_new_tokens": 24,
        "max_users": 16,
        "alphas": [0.0, 0.5, 1.0],
        "gating_ks": [0, 2, 8],
        "steer_ppa": False,
        "mmlu_items": 60,
        "neutral_texts": 2 * MIN_NEUTRAL_SELECT,  # the conditional step's two halves
        "side_effect_texts": 8,  # the side-effect table on the first 8 of them
        "kl_texts": 4,
        # one KL budget (the population vector's KL at α 0.5): the calibrated sweep, its α
        # search and its held-out KL once; the full study calibrates two
        "kl_alphas": [0.5],
        "token_effects": TokenEffectsConfig(
            targets_per_user=2,
            max_users=16,  # 8 users a side: the baselines' comparisons need the tokens
            patch_targets=1,
            patch_layers=2,  # the patching smoke on the first and last layer
            history_tokens=6,  # the detail figure's history tokens removed one at a time
            smoke=True,
        ),
        # one backbone (no BiPO or SAE training, no second mean-difference variant): the
        # SteerX comparison on 3 users is a smoke run; the full study runs every backbone
        "steerx_users_per_group": 1,
        "steerx_max_targets": 4,  # responses per user whose token effects feed the vectors
        "steerx_backbones": ["mean"],
    }


_C = TypeVar("_C")


def _remember_given(cls: type[_C]) -> type[_C]:
    """Record on each instance which fields its caller passed (``_given``), so that a preset
    fills only the others."""
    init = cls.__init__
    names = [f.name for f in dataclass_fields(cls)]  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._given = frozenset(names[: len(args)]) | frozenset(kwargs)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_remember_given
@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    data: str = "demo"
    out: str = "."
    quick: bool = False
    run: RunSection = field(default_factory=RunSection)  # seed, device, batch size
    options: MethodOptions = field(default_factory=MethodOptions)  # rank, C, shrink
    methods: list[str] = field(
        default_factory=lambda: ["population", "dislike-weighted", "bradley-terry"]
    )
    # Per-user vectors are rescaled to the population vector's norms, so one α grid serves
    # every method. From α 2 on, SmolLM2-135M collapses into repetition (the study's
    # population range on Llama-3.1-8B was likewise below 1: 0.3-0.6).
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    gating_ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])
    # the conditional step's condition: "mean-diff" or "logistic" (fit_condition's method)
    condition_method: Literal["mean-diff", "logistic"] = "mean-diff"
    n_prompts: int = 48
    max_users: int | None = None
    held_out: float = 0.25
    steer_ppa: bool = True
    steer_alpha: float = 0.5
    max_steer_pairs: int = 96
    mmlu_items: int = 200
    # side effects: neutral held-out texts (MMLU stems); the conditional step halves them
    # (equal-KL α on one half, >= 8 texts; its KL reported on the other)
    neutral_texts: int = 32
    kl_texts: int = 8  # of which the KL calibration uses the first few, the next as many report
    # the side-effects step's share of the neutral texts (the first ones; None: all of them);
    # the conditional step's equal-KL search needs more texts than the side-effect table
    side_effect_texts: int | None = None
    # side effects at fixed α: every user's vector is a row per text and α, so a few users per
    # personal method (the first, sorted) estimate each method's mean KL (units: texts)
    side_effect_users: int | None = 8
    # KL budgets: the population vector's KL at these α of the grid
    kl_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0])
    max_new_tokens: int = 48
    cells_per_batch: int = 64
    # two targets per user: 48 users give ~48 targets a side, intervals over 24 users a side
    token_effects: TokenEffectsConfig = field(
        default_factory=lambda: TokenEffectsConfig(targets_per_user=2)
    )
    steerx: bool = True
    steerx_users_per_group: int = 2
    # per user, the training responses whose token effects select SteerX's tokens
    steerx_max_targets: int = 8
    # every backbone; "sae" only where sae-lens (steerlens[sae]) is installed
    steerx_backbones: list[str] = field(default_factory=available_backbones)
    steps: list[str] = field(default_factory=lambda: list(_step_names()))
    # steps rerun even where results/steps.json has them done with the same inputs
    force: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run = as_section(self.run, RunSection)
        self.options = as_section(self.options, MethodOptions)
        if isinstance(self.token_effects, dict):
            self.token_effects = TokenEffectsConfig(**self.token_effects)
        if self.quick:  # the preset fills what the caller left unset, never what they set
            given: frozenset[str] = getattr(self, "_given", frozenset())
            for name, value in _quick_preset().items():
                if name not in given:
                    setattr(self, name, value)
        if not self.steerx and "steerx" in self.steps:
            self.steps = [s for s in self.steps if s != "steerx"]
        known = _step_names()
        bad_steps = [s for s in [*self.steps, *self.force] if s not in known]
        if bad_steps:
            raise ValueError(f"unknown steps {bad_steps}; use some of {list(known)}")
        bad_backbones = [b for b in self.steerx_backbones if b not in BACKBONES]
        if bad_backbones or not self.steerx_backbones:
            raise ValueError(
                f"steerx_backbones must be some of {tuple(BACKBONES)}, got {bad_backbones}"
            )
        if "sae" in self.steerx_backbones and "steerx" in self.steps:
            require_sae_lens("the steerx step's sae backbone")
        if self.steerx_users_per_group < 1 or self.steerx_max_targets < 1:
            raise ValueError("steerx_users_per_group and steerx_max_targets must be >= 1")
        if 0.0 not in self.alphas or len(self.alphas) < 2:
            raise ValueError("alphas must include 0.0 (the unsteered baseline) and one more")
        self.methods = method_names(self.methods)  # aliases ("bt") resolved, each once
        if "population" not in self.methods:
            raise ValueError("methods must include 'population' (the gating and MMLU vector)")
        if self.n_prompts < 1 or self.mmlu_items < 1:
            raise ValueError("n_prompts and mmlu_items must be >= 1")
        if self.side_effect_texts is not None and not (
            self.kl_texts <= self.side_effect_texts <= self.neutral_texts
        ):
            raise ValueError("side_effect_texts must be in [kl_texts, neutral_texts] (or None)")
        if not 1 <= self.kl_texts < self.neutral_texts:
            raise ValueError("need 1 <= kl_texts < neutral_texts (the next ones report the KL)")
        if "conditional" in self.steps and self.neutral_texts < 2 * MIN_NEUTRAL_SELECT:
            raise ValueError(
                f"the conditional step needs neutral_texts >= {2 * MIN_NEUTRAL_SELECT} (its "
                f"equal-KL α on {MIN_NEUTRAL_SELECT} texts, its KL reported on as many)"
            )
        if not self.kl_alphas or any(a not in self.alphas or a <= 0 for a in self.kl_alphas):
            raise ValueError(f"kl_alphas must be nonzero α of alphas {self.alphas}")
        if self.side_effect_users is not None and self.side_effect_users < 5:
            raise ValueError("side_effect_users must be >= 5 (or None: every user)")
        if any(k < 0 for k in self.gating_ks):
            raise ValueError("gating_ks must be >= 0")
        if self.condition_method not in ("mean-diff", "logistic"):
            raise ValueError(
                f"condition_method must be 'mean-diff' or 'logistic', got {self.condition_method!r}"
            )


StudyConfig = DemoConfig
