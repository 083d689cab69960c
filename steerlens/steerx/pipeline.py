"""The SteerX pipeline (reconstructed): a user's history -> token-level causal effects ->
preference-driven tokens -> a description -> a steering vector, next to the all-history
baseline through the same backbone.

Backbones (``SteerXConfig.backbone``): the response-contrast methods of the registry
(``steerlens.methods.registry.BACKBONES``, fitted in ``steerlens.methods.backbones``):

* ``"mean"`` — StyleVector: user's responses vs the model's generic responses to the same
  prompts; SteerX pools the user's side over the preference-driven tokens only;
* ``"mean-context"`` — the same all-history StyleVector as baseline; SteerX reads the user's
  responses with the description in context (as the system message) and without it, and
  takes the mean difference (``context_vector``);
* ``"bipo"`` — BiPO on (prompt, user's response, generic response) pairs; SteerX weights the
  chosen log-probabilities by the preference-driven tokens;
* ``"sae"`` — SAE features (needs an SAE for the layer): positive = the preference-driven
  tokens' activations (all response tokens for the baseline), negative = the generic
  responses' tokens.

Each target conversation's history is the user's other conversations (up to
``n_history``); the counterfactual is no history (NextQuill) or a placebo history. The SteerX
body text was not available: the selection rule (CE > 0.05) follows the same group's
NextQuill; the rest is this reconstruction's choice, recorded in the provenance.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from steerlens.core.models import HookedModel, default_layers
from steerlens.core.vectors import SteeringVector
from steerlens.methods.backbones import BackboneInputs
from steerlens.methods.bipo import BiPOConfig
from steerlens.methods.registry import BACKBONES as REGISTERED
from steerlens.methods.registry import BackboneName, available_backbones, get_backbone
from steerlens.methods.stylevector import generic_responses
from steerlens.steerx.describe import Description, describe
from steerlens.steerx.effects import Measure, Message, TokenEffects, batch_history_effects

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "SteerXConfig",
    "SteerXResult",
    "available_backbones",
    "conversation_messages",
    "steerx_user",
]

BACKBONES = tuple(REGISTERED)
"""The backbones' names, as the registry holds them."""


Conversation = tuple[str, str]  # (prompt, the user's chosen response)


@dataclass
class SteerXConfig:
    backbone: BackboneName = "mean"
    n_history: int = 4
    max_targets: int | None = 8
    threshold: float = 0.05
    measure: Measure = "effect"
    describe: Literal["spans", "model"] = "spans"
    layers: list[int] | None = None  # mean: these layers; bipo / sae: the first one
    generic_tokens: int = 64
    bipo: dict[str, Any] = field(default_factory=dict)  # BiPOConfig options
    sae_top_k: int = 20
    sae_max_density: float = 0.01
    batch_size: int = 8

    def __post_init__(self) -> None:
        get_backbone(self.backbone)  # validates the name
        if self.n_history < 1:
            raise ValueError("n_history must be >= 1")
        BiPOConfig(**self.bipo)  # validates the options


@dataclass
class SteerXResult:
    user: str
    vector: SteeringVector  # SteerX
    all_history: SteeringVector  # the same backbone on the whole history
    description: Description
    targets: list[Conversation]
    effects: list[TokenEffects]
    selected: list[list[int]]
    config: SteerXConfig
    in_all_history: list[int] = field(default_factory=list)  # targets each vector saw
    in_steerx: list[int] = field(default_factory=list)
    fallback: str | None = None  # why the SteerX vector is the all-history one, if it is

    def provenance(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "reconstruction": "SteerX body text unavailable; NextQuill selection rule",
            "config": asdict(self.config),
            "description": asdict(self.description),
            "fallback": self.fallback,
            "targets": [
                {
                    "prompt": p,
                    "response": r,
                    # a target without a generic response has no contrast, and a pooled
                    # SteerX vector skips targets without a selected token; every target
                    # still feeds the description
                    "in_all_history": k in self.in_all_history,
                    "in_steerx": k in self.in_steerx,
                    "selected_tokens": [e.tokens[i] for i in sel],
                    "selected_spans": e.spans(sel),
                }
                for k, ((p, r), e, sel) in enumerate(
                    zip(self.targets, self.effects, self.selected, strict=True)
                )
            ],
            "selected_share": sum(map(len, self.selected)) / max(1, sum(map(len, self.effects))),
        }

    def card(self, group: str = "", subtitle: str = "") -> dict[str, Any]:
        """The user card's data (``sl.plots.user_card``; ``results/steerx_cards.json``): the
        description, and per target its tokens, their effects and the selected ones."""
        return {
            "user": self.user,
            "group": group,
            "subtitle": subtitle,
            "description": self.description.text,
            "backbone": self.config.backbone,
            "targets": [
                {
                    "prompt": p,
                    "tokens": list(e.tokens),
                    "effect": e.effect.tolist(),
                    "selected": [int(i) for i in sel],
                }
                for (p, _), e, sel in zip(self.targets, self.effects, self.selected, strict=True)
            ],
        }

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.vector.save(folder / "steerx.safetensors")
        self.all_history.save(folder / "all_history.safetensors")
        (folder / "provenance.json").write_text(json.dumps(self.provenance(), indent=1))
        return folder


def conversation_messages(convs: Sequence[Conversation]) -> list[Message]:
    """(prompt, response) conversations as alternating user / assistant chat messages."""
    return [
        m
        for prompt, reply in convs
        for m in ({"role": "user", "content": prompt}, {"role": "assistant", "content": reply})
    ]


def steerx_user(
    model: HookedModel,
    conversations: Sequence[Conversation],
    *,
    user: str = "user",
    config: SteerXConfig | None = None,
    placebo: Sequence[Conversation] | None = None,
    generic: Sequence[str] | None = None,
    sae: Any = None,
    effects: Sequence[TokenEffects] | None = None,
    progress_bar: bool = True,
) -> SteerXResult:
    """SteerX and all-history vectors for one user from their conversations.

    Args:
        conversations: the user's (prompt, chosen response) pairs; each in turn is a target
            with the others as its history.
        placebo: another user's conversations: the counterfactual history (default: none).
        generic: the model's generic responses to the targets' prompts (generated if None).
        sae: an SAE for the ``"sae"`` backbone (``encode``, ``W_dec``).
        effects: the targets' token effects from an earlier call (same conversations and
            config), to build several backbones from one effects pass.
    """
    cfg = config or SteerXConfig()
    if len(conversations) < 2:
        raise ValueError("SteerX needs at least two conversations (a target and its history)")
    if cfg.backbone == "sae" and sae is None:
        raise ValueError("the sae backbone needs an SAE (sae=...) for the steering layer")
    targets = list(conversations[: cfg.max_targets] if cfg.max_targets else conversations)
    effects = _target_effects(model, conversations, targets, cfg, placebo, effects, progress_bar)
    selected = [e.select(threshold=cfg.threshold, measure=cfg.measure) for e in effects]
    keep = []
    for e, sel in zip(effects, selected, strict=True):
        mask = torch.zeros(len(e), dtype=torch.bool)
        mask[sel] = True
        keep.append(mask)
    description = describe(
        model, effects, mode=cfg.describe, threshold=cfg.threshold, measure=cfg.measure
    )
    prompts = [p for p, _ in targets]
    responses = [r for _, r in targets]
    if generic is None:
        generic = generic_responses(
            model,
            prompts,
            max_new_tokens=cfg.generic_tokens,
            batch_size=cfg.batch_size,
            progress_bar=False,
        )
    if len(generic) != len(targets):
        raise ValueError(f"{len(generic)} generic responses for {len(targets)} targets")
    # a target whose generic response is empty (the model stopped at once) has no generic
    # side: the backbones leave it out (its tokens still feed the description)
    ok = [i for i, g in enumerate(generic) if g.strip()]
    if not ok:
        raise ValueError("every generic response is empty: nothing to contrast with")
    inputs = BackboneInputs(
        model,
        [prompts[i] for i in ok],
        [responses[i] for i in ok],
        [generic[i] for i in ok],
        [keep[i] for i in ok],
        list(cfg.layers or default_layers(model)),
        prompts,
        responses,
        description.text,
        cfg.batch_size,
        cfg.bipo,
        sae,
        cfg.sae_top_k,
        cfg.sae_max_density,
        progress_bar,
    )
    backbone = get_backbone(cfg.backbone)
    in_steerx = _steerx_targets(backbone.pools, ok, inputs.keep, len(targets))
    fallback = None
    evidence = (
        bool(description.evidence)
        if backbone.pools == "context"
        else any(bool(k.any()) for k in inputs.keep)
    )
    if not evidence:
        # no preference-driven token (or none in a target with a generic side): SteerX has no
        # evidence to restrict to, so its vector is the all-history one, marked as such
        fallback = "no preference-driven tokens"
        in_steerx = ok
    base, vec = backbone.fit(inputs, fallback is not None)
    vec.method = f"steerx-{cfg.backbone}"
    base.method = f"all-history-{cfg.backbone}"
    for v in (vec, base):
        v.metadata.update({"user": user, "description": description.text})
    if fallback:
        vec.metadata["fallback"] = fallback
    return SteerXResult(
        user,
        vec,
        base,
        description,
        targets,
        effects,
        selected,
        cfg,
        in_all_history=ok,
        in_steerx=in_steerx,
        fallback=fallback,
    )


def _target_effects(
    model: HookedModel,
    conversations: Sequence[Conversation],
    targets: list[Conversation],
    cfg: SteerXConfig,
    placebo: Sequence[Conversation] | None,
    effects: Sequence[TokenEffects] | None,
    progress_bar: bool,
) -> list[TokenEffects]:
    """Each target's token effects: its history is the user's other conversations (up to
    ``n_history``), the counterfactual none or the placebo history; or those given."""
    if effects is not None:
        if [e.text for e in effects] != [r for _, r in targets]:
            raise ValueError("the effects given are not those of these targets")
        return list(effects)
    queries = []
    for k, (prompt, response) in enumerate(targets):
        rest = [c for j, c in enumerate(conversations) if j != k][: cfg.n_history]
        cf = conversation_messages(placebo[: len(rest)]) if placebo else None
        queries.append((prompt, response, conversation_messages(rest), cf))
    return batch_history_effects(
        model, queries, batch_size=cfg.batch_size, progress_bar=progress_bar
    )


def _steerx_targets(pools: str, ok: list[int], keep: list[Tensor], n_targets: int) -> list[int]:
    """The targets a backbone's SteerX vector sees: the pooled backbones (mean, sae) those
    with a generic side and a selected token; BiPO every one with a generic side
    (token-weighted); the context backbone every target (it needs no generic side)."""
    if pools == "selected":
        return [i for i, k in zip(ok, keep, strict=True) if bool(k.any())]
    if pools == "weighted":
        return ok
    return list(range(n_targets))
