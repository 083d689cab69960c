"""One registry of vector methods: one name, one label and one set of defaults for every
entry point (CLI, sweep configs, the demo, the studies)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import _fixture_rows, _write  # a small PRISM-format folder

import steerlens as sl
from steerlens.experiments.demo import DemoConfig
from steerlens.experiments.personalization import PersonalizationConfig, personalization_study
from steerlens.experiments.sweep import SweepConfig
from steerlens.methods import registry
from steerlens.methods.registry import METHODS, MethodOptions, get_method, method_label


def test_every_entry_point_reads_the_registry_defaults():
    opts = MethodOptions()
    for cfg in (SweepConfig(), PersonalizationConfig(), DemoConfig()):
        assert cfg.options == opts
    assert DemoConfig().methods == list(METHODS)  # the demo compares every registered method
    assert SweepConfig(methods=list(METHODS)).methods == list(METHODS)


def test_names_aliases_labels_and_bad_input():
    assert get_method("dislike") is get_method("dislike-weighted")
    assert get_method("bt").name == "bradley-terry"
    assert method_label("dislike-weighted") == "personalized (dislike-weighted)"
    with pytest.raises(ValueError, match="unknown vector method 'caa'; use one of population"):
        get_method("caa")
    with pytest.raises(ValueError, match="shrink >= 0"):
        MethodOptions(shrink=-1.0)
    with pytest.raises(ValueError, match="unknown methods"):
        SweepConfig(methods=["dislike-weightd"])


def test_the_registry_builds_what_the_primitives_build(tiny_bridge, tmp_path):
    folder = _write(tmp_path / "prism", _fixture_rows())
    pairs = sl.data.load_prism(folder).preference_pairs(turn0_only=True)
    pa = sl.methods.pair_activations(tiny_bridge, pairs, [2, 3], progress_bar=False)
    opts = MethodOptions(rank=2, shrink=3.0)
    users = pa.users
    built = registry.build_vectors(pa, list(METHODS), users, opts)
    pop = sl.methods.population(pa)
    torch.testing.assert_close(built["population"].as_tensor(), pop.as_tensor())
    bt = sl.methods.bradley_terry(pa, 2)
    for u in users:
        want = sl.methods.dislike_weighted(pa, u, shrink=3.0)
        assert torch.equal(built["dislike-weighted"][u].as_tensor(), want.as_tensor())
        want_bt = bt.user_vector(u, shrink=3.0)
        torch.testing.assert_close(built["bradley-terry"][u].as_tensor(), want_bt.as_tensor())


def test_adding_a_method_is_one_function_and_one_line(monkeypatch, tiny_bridge):
    """The CONTRIBUTING.md example: a method registered once is known to every entry point,
    and the study (which the demo's sweep takes its vectors from) builds it."""

    def _negated(pa, opts):
        vec = sl.methods.population(pa)
        flipped = sl.SteeringVector(
            {layer: -d for layer, d in vec.directions.items()}, model_name=vec.model_name
        )
        return registry.Fitted(lambda user: flipped)

    extra = registry.Method("negated-population", "population (negated)", False, _negated)
    monkeypatch.setitem(METHODS, extra.name, extra)
    assert SweepConfig(methods=["negated-population"]).methods == ["negated-population"]
    both = ["population", "negated-population"]
    assert DemoConfig(methods=both).methods == both
    assert method_label("negated-population") == "population (negated)"
    # aliases are accepted wherever get_method accepts them, and each method counts once
    assert SweepConfig(methods=["bt", "bradley-terry"]).methods == ["bradley-terry"]
    assert DemoConfig(methods=["population", "dislike", "bt"]).methods == list(METHODS)[:3]
    with pytest.raises(ValueError, match="unknown methods"):
        DemoConfig(methods=["population", "caa"])
    cfg = PersonalizationConfig(
        layers=[2, 3],
        methods=["population", "bt", "negated-population"],
        max_users=3,
        n_boot=50,
        steer_alpha=1.0,
        max_steer_pairs=2,
    )
    study = personalization_study(tiny_bridge, sl.data.load_prism("demo"), cfg, progress_bar=False)
    assert set(study.vectors) == {"population", "bradley-terry", "negated-population"}
    torch.testing.assert_close(
        study.vectors["negated-population"].as_tensor(), -study.population.as_tensor()
    )
    assert study.vectors["bradley-terry"] == study.bt_vectors
    # the fourth method's PPA rows: by projection, paired with population, under steering
    t = study.table.set_index(["method", "measure"])
    ppa = t.loc[("population (negated)", "ppa_projection"), "mean"]
    pop = t.loc[("population", "ppa_projection"), "mean"]
    assert ppa == pytest.approx(1.0 - pop)  # a negated vector ranks every pair the other way
    paired = t.loc[("population (negated) − population", "ppa_projection_paired"), "mean"]
    assert paired == pytest.approx(ppa - pop)
    assert ("population (negated)", "ppa_under_steering") in t.index
    from steerlens.experiments.steps.job import _ppa

    row = _ppa(study.table, "population (negated)", "ppa_under_steering")
    assert row["n"] > 0 and row["mean"] is not None
    missing = _ppa(study.table, "no such method", "ppa_under_steering")
    assert missing["mean"] is None and "no ppa_under_steering row" in missing["why"]


def test_one_default_per_parameter_read_from_the_options_everywhere():
    """The methods' own signatures take MethodOptions' defaults (the CLI, sweep configs, the
    demo and the analyses read MethodOptions itself)."""
    import inspect

    from steerlens.methods.personal import BradleyTerry, bradley_terry, dislike_weighted

    opts = MethodOptions()
    params = {
        "dislike_weighted.shrink": inspect.signature(dislike_weighted).parameters["shrink"],
        "user_vector.shrink": inspect.signature(BradleyTerry.user_vector).parameters["shrink"],
        "coords.shrink": inspect.signature(BradleyTerry.coords).parameters["shrink"],
        "bradley_terry.rank": inspect.signature(bradley_terry).parameters["rank"],
        "bradley_terry.C": inspect.signature(bradley_terry).parameters["C"],
    }
    for where, param in params.items():
        assert param.default == getattr(opts, where.split(".")[1]), where


def test_the_steerx_backbones_are_registered_once():
    from typing import get_args

    from steerlens.methods import registry
    from steerlens.methods.sae_train import sae_lens_available

    assert tuple(registry.BACKBONES) == get_args(registry.BackboneName)
    assert tuple(registry.BACKBONES) == sl.steerx.BACKBONES  # a view, not a second list
    assert {b.name: (b.pools, b.layers, b.extra) for b in registry.BACKBONES.values()} == {
        "mean": ("selected", "all", None),
        "mean-context": ("context", "all", None),
        "bipo": ("weighted", "middle", None),
        "sae": ("selected", "middle", "sae"),
    }
    expected = ["mean", "mean-context", "bipo"] + (["sae"] if sae_lens_available() else [])
    assert registry.available_backbones() == expected
    with pytest.raises(ValueError, match="backbone must be one of"):
        sl.steerx.SteerXConfig(backbone="nope")  # type: ignore[arg-type]


def test_steerx_builds_through_the_registered_fit(monkeypatch, tiny_bridge):
    """``steerx_user`` calls the registry's fit: a replaced fit's vectors come back."""
    from steerlens.methods import registry

    seen = {}

    def fake(inputs, fallback):
        seen["inputs"], seen["fallback"] = inputs, fallback
        v = sl.SteeringVector({1: torch.ones(tiny_bridge.cfg.d_model)}, model_name="tiny-random")
        return v, sl.SteeringVector({1: 2 * torch.ones(tiny_bridge.cfg.d_model)})

    monkeypatch.setitem(
        registry.BACKBONES, "mean", dataclasses.replace(registry.BACKBONES["mean"], fit=fake)
    )
    convs = [("say hi", "hi there friend"), ("say bye", "bye now pal"), ("go", "going away")]
    res = sl.steerx.steerx_user(
        tiny_bridge,
        convs,
        config=sl.steerx.SteerXConfig(backbone="mean", layers=[1]),
        generic=["hello", "goodbye", "ok"],
        progress_bar=False,
    )
    assert res.all_history.directions[1].eq(1).all() and res.vector.directions[1].eq(2).all()
    assert res.vector.method == "steerx-mean" and res.all_history.method == "all-history-mean"
    assert seen["inputs"].responses == [r for _, r in convs] and seen["inputs"].layers == [1]
    assert seen["fallback"] == (res.fallback is not None)
