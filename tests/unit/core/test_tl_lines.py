"""TransformerLens 3.9 and 4.x, and sae-lens as an optional extra.

The whole suite runs on both lines (`make test` on the default lock, TransformerLens 3.9 with
sae-lens; `make test-tl4` on TransformerLens 4 without it). The tests here check the edges: what
each line refuses, and that the refusal names the installed version or the extra to install.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import PROMPTS, needs_hooked

import steerlens as sl
from steerlens.core import _tl
from steerlens.experiments.demo import DemoConfig
from steerlens.experiments.steerx_study import SteerXStudyConfig
from steerlens.methods import sae_train


@pytest.fixture
def as_tl4(monkeypatch):
    """The installed TransformerLens read as 4.3.0 (what `_tl` decides from), on either line."""
    monkeypatch.setattr(_tl, "tl_version", lambda: "4.3.0")


def test_the_line_is_read_from_the_installed_version():
    """The metadata's answer agrees with what the installed TransformerLens actually ships."""
    ships = importlib.util.find_spec("transformer_lens.HookedTransformer") is not None
    assert _tl.has_hooked_transformer() == ships


def test_hooked_backend_on_tl4_names_the_version_and_the_bridge(as_tl4):
    with pytest.raises(_tl.HookedUnavailableError, match=r"transformer-lens 4\.3\.0") as err:
        sl.load_model("tiny-random", backend="hooked")
    assert "backend='bridge'" in str(err.value) and "<4" in str(err.value)
    assert _tl.official_model_name("gpt2") is None  # no loading_from_pretrained on 4.x


def test_the_installed_line_refuses_or_loads_hooked_as_it_should():
    if _tl.has_hooked_transformer():
        assert type(sl.load_model("tiny-random", backend="hooked")).__name__ == "HookedTransformer"
    else:
        with pytest.raises(_tl.HookedUnavailableError, match=_tl.tl_version().replace(".", r"\.")):
            sl.load_model("tiny-random", backend="hooked")


@needs_hooked
def test_official_names_resolve_on_3x():
    assert _tl.official_model_name("gpt2-small") == "gpt2"
    assert _tl.official_model_name("no-such-model-anywhere") is None


def test_a_users_own_tl_hook_on_the_bridge_equals_the_fast_path_padded_and_alone():
    """A TransformerLens hook the user adds on the bridge (the TL path) steers as the fast path
    steers, padded in a batch and one prompt at a time, on the installed line."""
    model = sl.load_model("tiny-random")
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))

    def add(resid, *, hook):
        return resid + 3.0 * v

    kw = dict(max_new_tokens=6, progress_bar=False)
    with model.hooks(fwd_hooks=[(sl.resid_post(2), add)]):
        own = sl.generate(model, PROMPTS, engine="tl", batch_size=3, **kw)
        alone = [sl.generate(model, [p], engine="tl", **kw)[0] for p in PROMPTS]
    vec = sl.SteeringVector({2: v})
    fast = sl.generate(model, PROMPTS, steering=vec, alpha=3.0, engine="hf", batch_size=3, **kw)
    assert own == alone == fast
    assert own != sl.generate(model, PROMPTS, engine="hf", **kw)


# --- sae-lens: an optional extra ---------------------------------------------------------


@pytest.fixture
def without_sae_lens(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        sae_train.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sae_lens" else real(name, *a),
    )


def test_sae_features_without_sae_lens_name_the_extra(without_sae_lens, tmp_path):
    assert not sae_train.sae_lens_available()
    for call in (
        lambda: sae_train.train_sae(torch.zeros(8, 4), layer=0),
        lambda: sae_train.load_sae(tmp_path),
        lambda: sae_train.ensure_sae(sl.load_model("tiny-random"), 2, folder=tmp_path),
    ):
        with pytest.raises(ImportError, match=r"steerlens\[sae\]"):
            call()
    with pytest.raises(ImportError, match=r"steerlens\[sae\]"):
        DemoConfig(steerx_backbones=["mean", "sae"])
    # the default studies leave the sae backbone out rather than fail 30 minutes in
    assert DemoConfig().steerx_backbones == ["mean", "mean-context", "bipo"]
    assert SteerXStudyConfig().backbones == ["mean", "mean-context", "bipo"]


def test_sae_lens_beside_a_transformer_lens_it_excludes_is_refused_by_name(as_tl4):
    """TransformerLens 4 installed over an environment that has sae-lens (which requires < 4):
    the SAE features say so, naming both versions, instead of failing inside sae-lens."""
    if importlib.util.find_spec("sae_lens") is None:
        pytest.skip("sae-lens is not installed here (the no-sae case is tested above)")
    assert not sae_train.sae_lens_available()
    with pytest.raises(ImportError, match=r"transformer-lens<4.*4\.3\.0 is installed"):
        sae_train.require_sae_lens("train_sae")


@pytest.mark.parametrize(
    "args",
    [["train-sae", "--model", "tiny-random"], ["steerx", "--user", "u", "--backbone", "sae"]],
    ids=["train-sae", "steerx-sae"],
)
def test_the_cli_without_sae_lens_names_the_extra_before_loading_a_model(
    without_sae_lens, monkeypatch, args
):
    from typer.testing import CliRunner

    from steerlens.cli import app
    from steerlens.core import models

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(models, "load_model", no_loading)
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, ImportError)
    assert "steerlens[sae]" in str(result.exception)


def test_sae_lens_is_not_a_core_dependency():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())["project"]
    assert not [r for r in project["dependencies"] if r.lower().startswith("sae-lens")]
    assert [r for r in project["optional-dependencies"]["sae"] if r.startswith("sae-lens")]
