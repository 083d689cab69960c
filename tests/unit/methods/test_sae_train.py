"""Training a small TopK SAE with sae-lens on the tiny model's activations; save and reload."""

from __future__ import annotations

import json

import torch

import steerlens as sl
from steerlens.methods.sae import sae_vector
from steerlens.methods.sae_train import load_sae, sae_text, save_sae, token_activations, train_sae


def test_train_save_reload_and_steer(tmp_path):
    model = sl.load_model("tiny-random")
    texts = sae_text(n_mmlu=20)[:60]
    acts = token_activations(model, texts, layer=2, progress_bar=False)
    assert acts.shape[1] == model.cfg.d_model and len(acts) > 1000
    sae, report = train_sae(acts, layer=2, d_sae=128, k=16, steps=200, batch_size=64, lr=3e-3)
    assert report.l0 <= 16 + 1e-6 and 0 <= report.dead_share <= 1
    assert report.explained_variance > 0.5  # far better than nothing (0) on held-out tokens
    folder = save_sae(sae, report, tmp_path / "sae")
    assert json.loads((folder / "steerlens_report.json").read_text())["k"] == 16
    loaded = load_sae(folder)
    torch.testing.assert_close(loaded.encode(acts[:50]), sae.encode(acts[:50]))
    vec, feats = sae_vector(loaded, acts[:100], acts[100:200], layer=2, max_density=1.0, top_k=5)
    assert vec.layers == [2] and len(feats.indices) <= 5
