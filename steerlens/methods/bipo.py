"""BiPO (Cao et al. 2024): a steering vector optimised with a bi-directional preference
objective.

One trainable vector ``v`` is added at one layer (``hook_resid_post``) through the same
steering hooks as every other vector (per-row gates, float32 sum cast once: bf16-safe). Each
step draws ``d`` in {-1, +1} and minimises::

    -log σ(d · β · [(log π_{+dv}(y_w|x) - log π_ref(y_w|x)) - (log π_{+dv}(y_l|x) - log π_ref(y_l|x))])

so ``+v`` raises the chosen response over the rejected one and ``-v`` does the opposite. The
reference code's settings are the defaults: β 0.1, AdamW lr 5e-4, weight decay 0.05, cosine
schedule with warm-up, batch 4, fp32 vector. Seeded; early stopping on a held-out share of
the pairs; a progress bar.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from steerlens.core._progress import progress
from steerlens.core.batching import Batch, map_batches
from steerlens.core.hooks import GateSpec, add_vector_hook, hook_name
from steerlens.core.models import HookedModel, default_layers, frozen_weights, model_name
from steerlens.core.tokens import encode_prompts, tokenize
from steerlens.core.vectors import SteeringVector
from steerlens.run.scoring import ids_logprobs

__all__ = ["BiPOConfig", "BiPOTrainer", "bipo"]


@dataclass
class BiPOConfig:
    layer: int | None = None  # default: the middle of the default steering layers
    beta: float = 0.1
    lr: float = 5e-4
    weight_decay: float = 0.05
    epochs: int = 10
    batch_size: int = 4
    warmup: float = 0.1  # share of the steps
    val_fraction: float = 0.2
    patience: int = 3  # epochs without a better held-out loss before stopping
    gate: str = "generated"  # the vector steers the response tokens it is scored on
    seed: int = 0

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("beta > 0, lr > 0, epochs >= 1 and batch_size >= 1 are needed")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.warmup < 1:
            raise ValueError("val_fraction and warmup must be in [0, 1)")
        if self.gate not in ("all", "generated"):
            raise ValueError(f"gate must be 'all' or 'generated', got {self.gate!r}")


class BiPOTrainer:
    """Holds the tokenised pairs and their reference log-probs; ``margin``/``loss`` are
    differentiable in ``v``; ``fit`` trains."""

    def __init__(
        self,
        model: HookedModel,
        pairs: Sequence[Any],
        config: BiPOConfig | None = None,
        *,
        chosen_weights: Sequence[Tensor] | None = None,
    ) -> None:
        if not pairs:
            raise ValueError("BiPO needs at least one preference pair")
        self.model = model
        self.cfg = config or BiPOConfig()
        layers = default_layers(model)
        self.layer = self.cfg.layer if self.cfg.layer is not None else layers[len(layers) // 2]
        if not 0 <= self.layer < model.cfg.n_layers:
            raise ValueError(f"layer {self.layer} is not in [0, {model.cfg.n_layers})")
        self.heads = encode_prompts(model, [p.messages() for p in pairs])
        self.chosen = [tokenize(model, [p.chosen], add_special_tokens=False)[0] for p in pairs]
        self.rejected = [tokenize(model, [p.rejected], add_special_tokens=False)[0] for p in pairs]
        n = len(pairs)
        # SteerX's token-weighted variant: log π(y_w) = Σ_t w_t log p(y_t) (1 = every token)
        self.weights = [torch.ones(len(c)) for c in self.chosen]
        if chosen_weights is not None:
            if len(chosen_weights) != n:
                raise ValueError(f"{len(chosen_weights)} weight vectors for {n} pairs")
            for i, w in enumerate(chosen_weights):
                if w.numel() != len(self.chosen[i]):
                    raise ValueError(
                        f"pair {i}: {w.numel()} weights for {len(self.chosen[i])} chosen tokens"
                    )
            self.weights = [w.float().flatten() for w in chosen_weights]
        ref = ids_logprobs(model, self.heads * 2, self.chosen + self.rejected, engine="tl")
        self.ref_w = torch.stack(
            [(r * w).sum() for r, w in zip(ref[:n], self.weights, strict=True)]
        )
        self.ref_l = torch.stack([r.sum() for r in ref[n:]])
        self.d_model = model.cfg.d_model

    def _logp(self, v: Tensor, idx: Sequence[int], d: float) -> tuple[Tensor, Tensor]:
        """Summed log-probs of the chosen and rejected responses of pairs ``idx`` with ``d·v``
        added (differentiable in ``v``)."""
        heads = [self.heads[i] for i in idx] * 2
        tails = [self.chosen[i] for i in idx] + [self.rejected[i] for i in idx]
        ids = [torch.cat([h, t]) for h, t in zip(heads, tails, strict=True)]
        plen = [int(h.numel()) for h in heads]
        gate: GateSpec = self.cfg.gate  # type: ignore[assignment]
        hook = add_vector_hook(v, alpha=d, gate=gate)

        k = len(idx)
        weights = [self.weights[i] for i in idx] + [None] * k

        def run(batch: Batch) -> list[Tensor]:
            logits = self.model(batch.enc.input_ids, attention_mask=batch.enc.attention_mask)
            out = []
            for r, j in enumerate(batch.rows):
                p, n_tok = plen[j], batch.enc.lengths[r]
                lp = logits[r, p - 1 : n_tok - 1].float().log_softmax(-1)
                tgt = batch.enc.input_ids[r, p:n_tok].to(lp.device)
                tok = lp.gather(-1, tgt[:, None])[:, 0]
                w = weights[j]
                out.append(tok.sum() if w is None else (tok * w.to(tok.device)).sum())
            return out

        with self.model.hooks(fwd_hooks=[(hook_name(self.layer), hook)]):  # type: ignore[list-item]
            res = map_batches(
                self.model, ids, run, batch_size=len(ids), side="right", prompt_lengths=plen
            )
        return torch.stack(res[:k]).cpu(), torch.stack(res[k:]).cpu()

    def margin(self, v: Tensor, idx: Sequence[int], d: float) -> Tensor:
        """Per pair: (log π_{+dv}(y_w) − log π_ref(y_w)) − (log π_{+dv}(y_l) − log π_ref(y_l))."""
        lw, ll = self._logp(v, idx, d)
        rows = list(idx)
        return (lw - self.ref_w[rows]) - (ll - self.ref_l[rows])

    def loss(self, v: Tensor, idx: Sequence[int], d: float) -> Tensor:
        """−log σ(d β margin), averaged over the pairs."""
        return -torch.nn.functional.logsigmoid(d * self.cfg.beta * self.margin(v, idx, d)).mean()

    def fit(self, *, progress_bar: bool = True) -> tuple[Tensor, dict[str, Any]]:
        cfg = self.cfg
        rng = random.Random(cfg.seed)
        order = list(range(len(self.heads)))
        rng.shuffle(order)
        n_val = round(cfg.val_fraction * len(order)) if len(order) > 2 else 0
        val, train = order[:n_val], order[n_val:]
        device = next(self.model.parameters()).device
        v = torch.zeros(self.d_model, device=device, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.AdamW([v], lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_epoch = math.ceil(len(train) / cfg.batch_size)
        total = per_epoch * cfg.epochs
        warm = max(1, int(cfg.warmup * total))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        history: dict[str, list[float]] = {"train": [], "val": []}
        best, best_v, stale = math.inf, v.detach().clone(), 0
        with frozen_weights(self.model), torch.enable_grad():
            for _epoch in progress(
                range(cfg.epochs), total=cfg.epochs, description="BiPO", enabled=progress_bar
            ):
                rng.shuffle(train)
                losses = []
                for s in range(0, len(train), cfg.batch_size):
                    d = rng.choice((-1.0, 1.0))
                    loss = self.loss(v, train[s : s + cfg.batch_size], d)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(float(loss.detach()))
                history["train"].append(sum(losses) / len(losses))
                if val:
                    with torch.no_grad():
                        vl = 0.5 * (float(self.loss(v, val, 1.0)) + float(self.loss(v, val, -1.0)))
                    history["val"].append(vl)
                    if vl < best - 1e-6:
                        best, best_v, stale = vl, v.detach().clone(), 0
                    else:
                        stale += 1
                        if stale >= cfg.patience:
                            break
                else:
                    best_v = v.detach().clone()
        return best_v, history


def bipo(
    model: HookedModel,
    pairs: Sequence[Any],
    config: BiPOConfig | None = None,
    *,
    chosen_weights: Sequence[Tensor] | None = None,
    progress_bar: bool = True,
) -> SteeringVector:
    """Train a BiPO vector on preference pairs (``PreferencePair`` records: ``.messages()``,
    ``.chosen``, ``.rejected``); ``+α·v`` steers toward the chosen responses.
    ``chosen_weights``: per pair, one weight per chosen-response token (SteerX: the
    preference-driven tokens), used in the chosen log-probabilities."""
    trainer = BiPOTrainer(model, pairs, config, chosen_weights=chosen_weights)
    v, history = trainer.fit(progress_bar=progress_bar)
    return SteeringVector(
        {trainer.layer: v.detach().cpu()},
        model_name=model_name(model),
        method="bipo",
        metadata={
            "config": asdict(trainer.cfg),
            "n_pairs": len(pairs),
            "token_weighted": chosen_weights is not None,
            "loss": history,
        },
    )
