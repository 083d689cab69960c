"""SAE-feature steering on a hand-made SAE: encode/decode shapes, dense and template feature
filtering, top-k selection, the decoded direction."""

from __future__ import annotations

import pytest
import torch

from steerlens.methods.sae import sae_vector


class HandSAE:
    """ReLU SAE with 6 features over d_model 4: feature i reads and writes basis vector i % 4."""

    def __init__(self) -> None:
        self.W_enc = torch.zeros(4, 6)
        self.W_dec = torch.zeros(6, 4)
        for i in range(6):
            self.W_enc[i % 4, i] = 1.0
            self.W_dec[i, i % 4] = 1.0 + i  # distinct norms, to see which were decoded
        self.b_enc = torch.tensor([0.0, 0.0, 0.0, 0.0, -0.5, 10.0])  # feature 5 always on

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc + self.b_enc)


def _acts(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_encode_shapes_and_mean_feature_difference():
    sae = HandSAE()
    pos = _acts([[2.0, 0, 1.0, 0], [2.0, 0, 1.0, 0]])
    neg = _acts([[0, 0, 0, 0], [0, 0, 0, 0]])
    vec, feats = sae_vector(sae, pos, neg, layer=3, top_k=2, max_density=1.0)
    # feature 5 fires on every token: a density of exactly 1 is not above max_density 1
    assert feats.dense == [] and feats.template == []
    # feature 0 (diff 2), feature 4 (reads dim 0, bias -0.5: diff 1.5), feature 2 (diff 1)
    assert feats.indices == [0, 4] and feats.weights == pytest.approx([2.0, 1.5])
    expected = 2.0 * sae.W_dec[0] + 1.5 * sae.W_dec[4]
    torch.testing.assert_close(vec.directions[3], expected)
    assert vec.method == "sae" and vec.metadata["features"] == [0, 4]


def test_dense_and_template_features_are_dropped():
    sae = HandSAE()
    pos = _acts([[2.0, 0, 1.0, 0]])
    neg = _acts([[0, 0, 0, 0]])
    density = _acts([[1.0, 0, 0, 0]] * 50 + [[0, 0, 0, 0]] * 50)  # features 0 and 4 fire on half
    _vec, feats = sae_vector(sae, pos, neg, layer=0, top_k=5, max_density=0.1, density_acts=density)
    assert 0 in feats.dense and 4 in feats.dense and 5 in feats.dense  # 5 is always on
    assert feats.indices == [2]
    template = _acts([[0, 0, 3.0, 0]])  # feature 2 fires on a template token
    with pytest.raises(ValueError, match="no allowed feature"):
        sae_vector(
            sae, pos, neg, layer=0, max_density=0.1, density_acts=density, template_acts=template
        )
    with pytest.raises(ValueError, match="tokens"):
        sae_vector(sae, pos[0], neg, layer=0)
