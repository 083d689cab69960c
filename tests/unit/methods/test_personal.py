"""Personal steering vectors from one pair-activation table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import assert_close_impl
from helpers import PAIRS, _table

import steerlens as sl
from steerlens.methods import (
    PairActivations,
    bradley_terry,
    dislike_weighted,
    mean_difference,
    pair_activations,
    population,
    shrinkage_weight,
)


def test_population_from_the_table_is_the_one_call_mean_difference(tiny):
    pa = pair_activations(tiny, PAIRS, [1, 3], progress_bar=False)
    assert len(pa) == 3 and pa.users == ["u1", "u2"]
    once = mean_difference(tiny, PAIRS, [1, 3], progress_bar=False)
    v = population(pa)
    torch.testing.assert_close(v.as_tensor(), once.as_tensor(), rtol=0, atol=0)  # same arithmetic
    assert v.method == "population" and v.metadata["n_pairs"] == 3 and v.layers == [1, 3]


def test_population_matches_steering_vectors_on_text_pairs(tiny_bridge):
    steering_vectors = pytest.importorskip("steering_vectors")
    from steerlens.core._tiny import tiny_hf_model

    texts = [("I love this movie", "I hate this movie"), ("What a joy", "What a pain it was")]
    hf, tok = tiny_hf_model()
    ref = steering_vectors.train_steering_vector(hf, tok, texts, layers=[1, 3], batch_size=2)
    ours = population(pair_activations(tiny_bridge, texts, [1, 3], progress_bar=False))
    for layer in (1, 3):
        assert_close_impl(ours.directions[layer], ref.layer_activations[layer].float())


def test_dislike_weighting_equals_the_hand_computation():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(4, 2, 5, generator=g), torch.randn(4, 2, 5, generator=g)
    pa = _table(chosen, rejected, ["a", "a", "b", "a"], [10.0, 30.0, 99.0, 60.0])
    v = dislike_weighted(pa, "a", shrink=0.0)  # the user's own estimate alone
    d = chosen - rejected
    hand = (10 * d[0] + 30 * d[1] + 60 * d[3]) / 100
    torch.testing.assert_close(v.as_tensor(), hand)
    assert v.metadata["n_pairs"] == 3 and v.metadata["users"] == ["a"]
    pop = chosen.mean(0) - rejected.mean(0)
    shrunk = dislike_weighted(pa, "a", shrink=3.0)  # 3 pairs, shrink 3 -> weight 1/2
    torch.testing.assert_close(shrunk.as_tensor(), 0.5 * hand + 0.5 * pop)
    with pytest.raises(KeyError, match="no pairs of user 'z'"):
        dislike_weighted(pa, "z")


def test_shrinkage_weight_grows_with_pair_count():
    ws = [shrinkage_weight(n, 5.0) for n in range(0, 60)]
    assert ws[0] == 0.0 and ws[5] == 0.5 and ws[45] == pytest.approx(0.9)
    assert all(b > a for a, b in itertools.pairwise(ws))
    assert shrinkage_weight(3, 0.0) == 1.0
    with pytest.raises(ValueError):
        shrinkage_weight(3, -1.0)


def test_bradley_terry_recovers_planted_user_preferences():
    rng = np.random.default_rng(0)
    n_layers, d, k, per_user = 2, 12, 3, 300
    basis = np.linalg.qr(rng.normal(size=(n_layers * d, k)))[0].T  # [k, L*d] orthonormal
    planted = {f"u{i}": rng.normal(size=k) * 2.0 for i in range(6)}
    chosen, rejected, users = [], [], []
    for user, c in planted.items():
        z = rng.normal(size=(per_user, k))
        prefer = rng.random(per_user) < 1 / (1 + np.exp(-(z @ c)))  # the BT draw
        diff = np.where(prefer[:, None], 1.0, -1.0) * (z @ basis)
        diff += 0.01 * rng.normal(size=diff.shape)
        base = rng.normal(size=diff.shape)
        chosen.append(base + diff)
        rejected.append(base)
        users += [user] * per_user
    pa = _table(
        torch.tensor(np.concatenate(chosen)).float().view(-1, n_layers, d),
        torch.tensor(np.concatenate(rejected)).float().view(-1, n_layers, d),
        users,
        [1.0] * len(users),
    )
    bt = bradley_terry(pa, rank=k, C=10.0)
    assert bt.basis.shape == (k, n_layers, d)
    gram = torch.einsum("kld,jld->kj", bt.basis, bt.basis)
    torch.testing.assert_close(gram, torch.eye(k), atol=1e-5, rtol=0)
    own = [bt.user_vector(u, shrink=0.0) for u in planted]
    fitted = np.stack([v.as_tensor().flatten().numpy() for v in own])
    truth = np.stack([c @ basis for c in planted.values()])
    corr = np.corrcoef(fitted.ravel(), truth.ravel())[0, 1]
    assert corr >= 0.9
    assert set(bt.coordinates.index) == {*planted, bt.POPULATION}
    assert (bt.coordinates.loc[list(planted), "n_pairs"] == per_user).all()
    v = bt.user_vector("u0", shrink=per_user)  # weight 1/2 toward the population coordinates
    expected = 0.5 * bt.coords("u0", 0.0) + 0.5 * bt.coords(bt.POPULATION, 0.0)
    torch.testing.assert_close(bt.coords("u0", per_user), expected)
    assert v.method == "bradley_terry" and v.metadata["rank"] == k


def test_table_round_trip_and_errors(tiny, tmp_path):
    pa = pair_activations(tiny, PAIRS, [1, 2], progress_bar=False)
    pa.save(tmp_path / "pa")
    back = PairActivations.load(tmp_path / "pa")
    torch.testing.assert_close(back.chosen, pa.chosen, rtol=0, atol=0)
    torch.testing.assert_close(back.rejected, pa.rejected, rtol=0, atol=0)
    assert back.table["user_id"].tolist() == ["u1", "u1", "u2"]
    assert back.layers == [1, 2] and back.model_name == "tiny-random"
    with pytest.raises(FileExistsError):
        pa.save(tmp_path / "pa")
    with pytest.raises(ValueError, match="non-empty"):
        pair_activations(tiny, [], [1])
    with pytest.raises(TypeError, match="all PreferencePair"):
        pair_activations(tiny, [PAIRS[0], ("a", "b")], [1])
    bt = bradley_terry(pa, rank=2)
    user_vec = bt.user_vector("u1")
    user_vec.validate(tiny)
    ids = sl.tokens.tokenize(tiny, ["hi"])[0][None].to(tiny.cfg.device)
    with torch.no_grad():
        plain = tiny(ids)
        with sl.steering(tiny, user_vec, alpha=2.0):
            steered = tiny(ids)
    assert user_vec.layers == [1, 2] and float((steered - plain).abs().max()) > 1e-3
