"""Training a small TopK SAE with sae-lens on the tiny model's activations; save and reload."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_sae_lens

import steerlens as sl
from steerlens.methods.sae import sae_vector
from steerlens.methods.sae_train import load_sae, sae_text, save_sae, token_activations, train_sae


@needs_sae_lens
def test_train_save_reload_and_steer(tmp_path):
    model = sl.load_model("tiny-random")
    texts = sae_text(n_mmlu=20)[:60]
    acts = token_activations(model, texts, layer=2, progress_bar=False)
    assert acts.shape[1] == model.cfg.d_model and len(acts) > 1000
    sae, report = train_sae(acts, layer=2, d_sae=128, k=16, steps=200, batch_size=64, lr=3e-3)
    # the report's numbers, recomputed on the held-out tokens (the seeded 10 % train_sae keeps
    # out): dead latents fire on none of them, L0 counts active latents per token
    n_eval = int(0.1 * len(acts))
    assert (report.n_eval_tokens, report.n_train_tokens) == (n_eval, len(acts) - n_eval)
    held = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))[:n_eval]]
    with torch.no_grad():
        feats = sae.encode(held)
        rec = sae.decode(feats)
    fired = feats > 0
    assert report.dead_share == pytest.approx(float((fired.sum(0) == 0).float().mean()))
    assert report.l0 == pytest.approx(float(fired.sum(1).float().mean())) and report.l0 <= 16
    sse, sst = ((rec - held) ** 2).sum(), ((held - held.mean(0)) ** 2).sum()
    assert report.explained_variance == pytest.approx(float(1 - sse / sst), rel=1e-4)
    assert report.explained_variance > 0.5  # far better than nothing (0) on held-out tokens
    folder = save_sae(sae, report, tmp_path / "sae")
    assert json.loads((folder / "steerlens_report.json").read_text())["k"] == 16
    loaded = load_sae(folder)
    torch.testing.assert_close(loaded.encode(acts[:50]), sae.encode(acts[:50]))
    vec, feats = sae_vector(loaded, acts[:100], acts[100:200], layer=2, max_density=1.0, top_k=5)
    # the five latents most active on the first 100 tokens relative to the next 100
    with torch.no_grad():
        diff = loaded.encode(acts[:100]).mean(0) - loaded.encode(acts[100:200]).mean(0)
    top = diff.topk(5)
    assert vec.layers == [2] and feats.indices == top.indices.tolist()
    assert feats.weights == pytest.approx(top.values.tolist(), rel=1e-5)


@needs_sae_lens
def test_a_trained_sae_is_the_one_a_later_run_loads(tmp_path):
    from steerlens.methods.sae_train import ensure_sae

    model = sl.load_model("tiny-random")
    kw = dict(folder=tmp_path / "sae", progress_bar=False)
    first, rep = ensure_sae(model, 2, n_texts=40, d_sae=64, k=8, steps=20, batch_size=64, **kw)
    again, rep2 = ensure_sae(model, 2, **kw)  # found on disk: not trained again
    assert rep2 == rep and type(first) is type(again)
    x = torch.randn(20, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(first.encode(x), again.encode(x), rtol=0, atol=0)
