"""BiPO: the loss falls, the margin's gradient flips with d, bf16 training matches fp32."""

from __future__ import annotations

import pytest
import torch
from conftest import no_hooks_left
from helpers import _pair

import steerlens as sl
from steerlens.core.models import frozen_weights
from steerlens.methods.bipo import BiPOConfig, BiPOTrainer, bipo

PAIRS = [
    _pair("u1", "Tell me a joke.", "Sure! Here you go.", "No.", 30, 0),
    _pair("u1", "Fix my code.", "Sure! Try this.", "Cannot do.", 20, 1),
    _pair("u1", "A poem?", "Sure! Roses.", "Refused.", 10, 2),
    _pair("u1", "Hi?", "Sure! Hello.", "Go away.", 10, 3),
]
CFG = dict(epochs=6, lr=0.3, batch_size=2, val_fraction=0.0, layer=2)


def test_margin_gradient_flips_with_the_direction(tiny):
    trainer = BiPOTrainer(tiny, PAIRS, BiPOConfig(**CFG))
    grads = []
    for d in (1.0, -1.0):
        v = torch.zeros(tiny.cfg.d_model, requires_grad=True)
        with torch.enable_grad(), frozen_weights(tiny):
            trainer.margin(v, [0, 1], d).sum().backward()
        grads.append(v.grad)
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[0], -grads[1])
    # at v = 0 the steered model is the reference: the margin is exactly 0
    with torch.no_grad():
        assert torch.allclose(
            trainer.margin(torch.zeros(tiny.cfg.d_model), [0, 1, 2], 1.0), torch.zeros(3), atol=1e-3
        )
    assert no_hooks_left(tiny) and all(p.requires_grad for p in tiny.parameters())


def test_training_lowers_the_loss_and_steers_toward_chosen(tiny):
    vec = bipo(tiny, PAIRS, BiPOConfig(**CFG), progress_bar=False)
    losses = vec.metadata["loss"]["train"]
    assert losses[0] == pytest.approx(0.6931, abs=0.02) and losses[-1] < losses[0] - 0.05
    assert vec.method == "bipo" and vec.layers == [2]
    trainer = BiPOTrainer(tiny, PAIRS, BiPOConfig(**CFG))
    v = vec.directions[2]
    with torch.no_grad():  # +v raises the chosen-over-rejected margin, -v lowers it
        assert float(trainer.margin(v, range(4), 1.0).mean()) > 0
        assert float(trainer.margin(v, range(4), -1.0).mean()) < 0
    assert no_hooks_left(tiny)


def test_bf16_training_matches_fp32():
    fp32 = sl.load_model("tiny-random")
    bf16 = sl.load_model("tiny-random", dtype="bfloat16")
    a = bipo(fp32, PAIRS, BiPOConfig(**CFG), progress_bar=False).directions[2]
    b = bipo(bf16, PAIRS, BiPOConfig(**CFG), progress_bar=False).directions[2]
    assert b.dtype == torch.float32  # the trained vector stays fp32
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
    # bf16 keeps ~3 significant digits of every activation and gradient; Adam amplifies the
    # noise a little over the steps, so the tolerance is on direction and size, not bits
    assert cos > 0.9 and abs(float(b.norm() / a.norm()) - 1) < 0.1


def test_config_validation():
    with pytest.raises(ValueError):
        BiPOConfig(beta=0)
    with pytest.raises(ValueError, match="gate"):
        BiPOConfig(gate="prefill")
    with pytest.raises(ValueError, match="pair"):
        BiPOTrainer(sl.load_model("tiny-random"), [])
