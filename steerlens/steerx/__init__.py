"""SteerX (reconstructed): token-level causal effects of a user's history, finer attributions
(history items, history tokens, activation and attribution patching), preference
descriptions and the pipeline to a steering vector on four backbones (mean-difference with
selected tokens or the description in context, BiPO, SAE features)."""

from steerlens.steerx.describe import DESCRIBE_PROMPT, Description, describe, evidence_spans
from steerlens.steerx.effects import (
    HistoryTokenEffects,
    ItemEffects,
    TokenEffects,
    batch_history_effects,
    history_effects,
    history_items,
    history_token_effects,
    item_effects,
    shuffled_history,
    target_tokens,
)
from steerlens.steerx.patching import (
    PatchingResult,
    activation_patching,
    attribution_patching,
    rank_agreement,
)
from steerlens.steerx.pipeline import (
    BACKBONES,
    SteerXConfig,
    SteerXResult,
    available_backbones,
    steerx_user,
)

__all__ = [
    "BACKBONES",
    "DESCRIBE_PROMPT",
    "Description",
    "HistoryTokenEffects",
    "ItemEffects",
    "PatchingResult",
    "SteerXConfig",
    "SteerXResult",
    "TokenEffects",
    "activation_patching",
    "attribution_patching",
    "available_backbones",
    "batch_history_effects",
    "describe",
    "evidence_spans",
    "history_effects",
    "history_items",
    "history_token_effects",
    "item_effects",
    "rank_agreement",
    "shuffled_history",
    "steerx_user",
    "target_tokens",
]
