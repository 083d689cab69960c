"""The SteerX pipeline (reconstructed): a user's history -> token-level causal effects ->
preference-driven tokens -> a description -> a steering vector, next to the all-history
baseline through the same backbone.

Backbones (``SteerXConfig.backbone``):

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

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from steerlens.core.models import HookedModel, default_layers, model_name
from steerlens.core.tokens import response_masks
from steerlens.core.vectors import SteeringVector
from steerlens.methods.bipo import BiPOConfig, bipo
from steerlens.methods.sae import sae_vector
from steerlens.methods.sae_train import sae_lens_available
from steerlens.methods.stylevector import context_vector, generic_responses, style_vector
from steerlens.run.cache import cache_activations
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

BACKBONES = ("mean", "mean-context", "bipo", "sae")
Backbone = Literal["mean", "mean-context", "bipo", "sae"]


def available_backbones() -> list[str]:
    """The backbones a study runs by default: every one, ``"sae"`` left out (with a notice)
    where sae-lens (``steerlens[sae]``), which trains its SAE, cannot be used."""
    if sae_lens_available():
        return list(BACKBONES)
    logger.info("the sae backbone is left out: it trains its SAE with pip install 'steerlens[sae]'")
    return [b for b in BACKBONES if b != "sae"]


Conversation = tuple[str, str]  # (prompt, the user's chosen response)


@dataclass
class SteerXConfig:
    backbone: Backbone = "mean"
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
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
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


@dataclass(frozen=True)
class _Pair:
    prompt: str
    chosen: str
    rejected: str

    def messages(self) -> list[Message]:
        return [{"role": "user", "content": self.prompt}]


def _token_acts(
    model: HookedModel,
    prompts: list[str],
    texts: list[str],
    keep: list[Tensor] | None,
    layer: int,
    batch_size: int,
) -> Tensor:
    """Activations at ``layer`` of the responses' tokens (the kept ones), stacked."""
    ids, masks = response_masks(model, prompts, texts)
    if keep is not None:
        masks = [
            torch.cat([torch.zeros(len(m) - len(k), dtype=torch.bool), k.bool()])
            for m, k in zip(masks, keep, strict=True)
        ]
    rows = [i for i, m in enumerate(masks) if bool(m.any())]
    acts = cache_activations(
        model,
        [ids[i] for i in rows],
        [layer],
        pool="none",
        masks=[masks[i] for i in rows],
        batch_size=batch_size,
        progress_bar=False,
    )
    assert isinstance(acts, list)
    return torch.cat([a[0] for a in acts])


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
    queries = []
    for k, (prompt, response) in enumerate(targets):
        rest = [c for j, c in enumerate(conversations) if j != k][: cfg.n_history]
        cf = conversation_messages(placebo[: len(rest)]) if placebo else None
        queries.append((prompt, response, conversation_messages(rest), cf))
    if effects is None:
        effects = batch_history_effects(
            model, queries, batch_size=cfg.batch_size, progress_bar=progress_bar
        )
    elif [e.text for e in effects] != [r for _, r in targets]:
        raise ValueError("the effects given are not those of these targets")
    effects = list(effects)
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
    all_prompts, all_responses = prompts, responses
    prompts, responses = [prompts[i] for i in ok], [responses[i] for i in ok]
    generic, keep = [generic[i] for i in ok], [keep[i] for i in ok]
    layers = cfg.layers or default_layers(model)
    # which targets each vector saw: all-history every one with a generic side; SteerX's
    # pooled backbones (mean, sae) only those among them with a selected token; BiPO all of
    # them (token-weighted); mean-context every target (it needs no generic side)
    in_steerx = {
        "mean": [i for i, k in zip(ok, keep, strict=True) if bool(k.any())],
        "sae": [i for i, k in zip(ok, keep, strict=True) if bool(k.any())],
        "bipo": ok,
        "mean-context": list(range(len(targets))),
    }[cfg.backbone]
    fallback = None
    if (
        not description.evidence
        if cfg.backbone == "mean-context"
        else not any(bool(k.any()) for k in keep)
    ):
        # no preference-driven token (or none in a target with a generic side): SteerX has no
        # evidence to restrict to, so its vector is the all-history one, marked as such
        fallback = "no preference-driven tokens"
        in_steerx = ok
    if cfg.backbone in ("mean", "mean-context"):
        base = style_vector(model, prompts, responses, generic, layers)
        if fallback:
            vec = copy.deepcopy(base)
        elif cfg.backbone == "mean":
            vec = style_vector(model, prompts, responses, generic, layers, keep=keep)
        else:
            vec = context_vector(model, all_prompts, all_responses, description.text, layers)
    elif cfg.backbone == "bipo":
        bcfg = BiPOConfig(**{"layer": layers[0], **cfg.bipo})
        pairs = [_Pair(p, r, g) for p, r, g in zip(prompts, responses, generic, strict=True)]
        base = bipo(model, pairs, bcfg, progress_bar=progress_bar)
        vec = (
            copy.deepcopy(base)
            if fallback
            else bipo(
                model,
                pairs,
                bcfg,
                chosen_weights=[k.float() for k in keep],
                progress_bar=progress_bar,
            )
        )
    else:
        layer = layers[0]
        neg = _token_acts(model, prompts, list(generic), None, layer, cfg.batch_size)
        pos_all = _token_acts(model, prompts, responses, None, layer, cfg.batch_size)
        kw: dict[str, Any] = dict(
            layer=layer,
            model_name=model_name(model),
            top_k=cfg.sae_top_k,
            max_density=cfg.sae_max_density,
            density_acts=torch.cat([pos_all, neg]),
        )
        base, _ = sae_vector(sae, pos_all, neg, **kw)
        if fallback:
            vec = copy.deepcopy(base)
        else:
            pos_sel = _token_acts(model, prompts, responses, keep, layer, cfg.batch_size)
            vec, _ = sae_vector(sae, pos_sel, neg, **kw)
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
