from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import steerlens as sl
from steerlens.core._tl import has_hooked_transformer, tl_version
from steerlens.methods.sae_train import sae_lens_available

# TransformerLens 4 has no HookedTransformer: the "hooked" cases are skipped there, by name.
needs_hooked = pytest.mark.skipif(
    not has_hooked_transformer(),
    reason=f"transformer-lens {tl_version()} has no HookedTransformer (removed in 4.0)",
)
needs_sae_lens = pytest.mark.skipif(
    not sae_lens_available(), reason="sae-lens (the steerlens[sae] extra) is not installed"
)
BACKENDS = ["bridge", pytest.param("hooked", marks=needs_hooked)]
PROMPTS = [
    "hello there, how are you today?",
    "hi",
    "a much longer prompt with many more tokens in it than the others",
]


@pytest.fixture(scope="session", params=BACKENDS)
def tiny(request: pytest.FixtureRequest) -> sl.HookedModel:
    """The tiny random model under both model classes."""
    return sl.load_model("tiny-random", backend=request.param)


@pytest.fixture(scope="session")
def tiny_bridge() -> sl.HookedModel:
    return sl.load_model("tiny-random", backend="bridge")


@pytest.fixture(scope="session")
def embedded() -> sl.HookedModel:
    return sl.load_model()


@pytest.fixture
def rand_vec(tiny: sl.HookedModel) -> sl.SteeringVector:
    g = torch.Generator().manual_seed(1)
    return sl.SteeringVector(
        {
            2: torch.randn(tiny.cfg.d_model, generator=g),
            3: torch.randn(tiny.cfg.d_model, generator=g),
        },
        model_name="tiny-random",
    )


def no_hooks_left(model: sl.HookedModel) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


ENGINES = ["tl", "hf"]


def assert_close_impl(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-3) -> None:
    """Two *implementations* of the same float32 computation (einsum vs sdpa attention, batched
    vs single, KV cache vs full pass): their last bits differ by CPU, so the tolerance scales
    with the values (``rel`` of the largest magnitude) instead of a fixed atol."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()  # CUDA runs too
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-6))


def on_device(model: sl.HookedModel, ids: torch.Tensor) -> torch.Tensor:
    """Token ids (``sl.tokens.tokenize`` keeps them on the CPU) moved to the model's device."""
    return ids.to(model.cfg.device)


def tl_hook_count(model: sl.HookedModel) -> int:
    return sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())
