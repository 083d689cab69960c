"""The SteerX pipeline end to end on the tiny model: every backbone, deterministic, saved
with provenance; descriptions from evidence."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_close_impl

import steerlens as sl
from steerlens.steerx import SteerXConfig, describe, evidence_spans, steerx_user

CONVS = [
    ("Tell me a joke.", "Damn, fine: a duck walks into a bar."),
    ("How do I cook rice?", "Honestly? Boil it, dude."),
    ("Tips for sleep?", "Ugh, just sleep more, lol."),
]
PLACEBO = [("Plan a trip.", "Certainly. Kindly consider Rome."), ("Hi?", "Good day to you.")]
GENERIC = ["Here is a joke.", "Rinse the rice, then simmer.", "Keep a regular schedule."]


class RandomSAE:
    def __init__(self, d_model: int, d_sae: int = 128) -> None:
        g = torch.Generator().manual_seed(0)
        self.W_enc = torch.randn(d_model, d_sae, generator=g) / d_model**0.5
        self.W_dec = torch.randn(d_sae, d_model, generator=g) / d_sae**0.5
        self.b_enc = torch.zeros(d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc + self.b_enc)


@pytest.mark.parametrize("backbone", ["mean", "mean-context", "bipo", "sae"])
def test_pipeline_runs_end_to_end_and_is_deterministic(tiny_bridge, backbone, tmp_path):
    cfg = SteerXConfig(
        backbone=backbone,
        n_history=2,
        threshold=0.0,
        layers=[2],
        generic_tokens=4,
        bipo={"epochs": 2, "lr": 0.05, "val_fraction": 0.0},
        sae_max_density=1.0,
    )
    kw = dict(
        user="u1",
        config=cfg,
        placebo=PLACEBO,
        generic=GENERIC,
        progress_bar=False,
        sae=RandomSAE(tiny_bridge.cfg.d_model),
    )
    a = steerx_user(tiny_bridge, CONVS, **kw)
    b = steerx_user(tiny_bridge, CONVS, **kw)
    assert (
        a.vector.method == f"steerx-{backbone}"
        and a.all_history.method == f"all-history-{backbone}"
    )
    assert torch.equal(a.vector.as_tensor(), b.vector.as_tensor())  # same run twice: same bits
    assert torch.equal(a.all_history.as_tensor(), b.all_history.as_tensor())
    assert not torch.allclose(a.vector.as_tensor(), a.all_history.as_tensor())
    assert len(a.effects) == 3 and all(
        len(s) < len(e) for s, e in zip(a.selected, a.effects, strict=False)
    )
    assert a.description.mode == "spans" and a.description.text
    prov = json.loads((a.save(tmp_path) / "provenance.json").read_text())
    assert prov["config"]["backbone"] == backbone and len(prov["targets"]) == 3
    assert sl.SteeringVector.load(tmp_path / "steerx.safetensors").metadata["user"] == "u1"


def test_descriptions_rank_and_deduplicate_evidence(tiny):
    effs = sl.steerx.batch_history_effects(
        tiny, [(p, r, [], None) for p, r in CONVS[:2]]
    )  # no history: every effect is 0, nothing selected
    assert evidence_spans(effs) == []
    assert describe(tiny, effs).text == "No preference-driven tokens were found."
    eff = effs[0]
    eff.logp_without = eff.logp_with - torch.linspace(0, 2, len(eff))  # later tokens: larger
    spans = evidence_spans([eff, eff], threshold=0.0, measure="log_ratio")
    assert len(spans) == 1 and spans[0] == eff.text[eff.offsets[1][0] :].strip()
    d = describe(tiny, [eff], mode="model", threshold=0.0, measure="log_ratio", max_new_tokens=4)
    assert d.mode == "model" and d.text.startswith("The user prefers") and d.evidence == spans
    assert "past conversations" in d.prompt
    with pytest.raises(ValueError, match="mode"):
        describe(tiny, [eff], mode="poem")  # type: ignore[arg-type]


def test_pipeline_errors():
    with pytest.raises(ValueError, match="backbone"):
        SteerXConfig(backbone="lora")  # type: ignore[arg-type]
    m = sl.load_model("tiny-random")
    with pytest.raises(ValueError, match="two conversations"):
        steerx_user(m, CONVS[:1])
    with pytest.raises(ValueError, match="SAE"):
        steerx_user(m, CONVS, config=SteerXConfig(backbone="sae"))


def test_targets_with_an_empty_generic_response_are_left_out_of_the_backbone(tiny_bridge):
    cfg = SteerXConfig(backbone="mean", n_history=2, threshold=0.0, layers=[2])
    kw = dict(config=cfg, progress_bar=False)
    effects = steerx_user(tiny_bridge, CONVS, generic=GENERIC, **kw).effects
    gaps = ["", GENERIC[1], GENERIC[2]]  # the model stopped at once on the first prompt
    got = steerx_user(tiny_bridge, CONVS, generic=gaps, effects=effects, **kw)
    only = steerx_user(tiny_bridge, CONVS[1:], generic=GENERIC[1:], effects=effects[1:], **kw)
    assert len(got.effects) == 3  # every target still feeds the description
    assert got.all_history.metadata["n_prompts"] == 2
    assert_close_impl(got.all_history.as_tensor(), only.all_history.as_tensor())
    assert_close_impl(got.vector.as_tensor(), only.vector.as_tensor())  # keep masks follow
    prov = got.provenance()
    assert [t["in_all_history"] for t in prov["targets"]] == [False, True, True]
    assert [t["in_steerx"] for t in prov["targets"]] == [False, True, True]  # all selected
    with pytest.raises(ValueError, match="every generic response is empty"):
        steerx_user(tiny_bridge, CONVS, generic=["", " \n", ""], effects=effects, **kw)


@pytest.mark.parametrize("backbone", ["mean", "mean-context", "bipo", "sae"])
def test_no_selected_token_falls_back_to_the_all_history_vector(tiny_bridge, backbone):
    cfg = SteerXConfig(
        backbone=backbone,
        n_history=2,
        threshold=10.0,  # no token passes
        layers=[2],
        bipo={"epochs": 1, "lr": 0.05, "val_fraction": 0.0},
        sae_max_density=1.0,
    )
    res = steerx_user(
        tiny_bridge,
        CONVS,
        config=cfg,
        generic=GENERIC,
        sae=RandomSAE(tiny_bridge.cfg.d_model),
        progress_bar=False,
    )
    assert not any(res.selected) and res.fallback == "no preference-driven tokens"
    assert torch.equal(res.vector.as_tensor(), res.all_history.as_tensor())
    assert res.vector.metadata["fallback"] == res.provenance()["fallback"]
    assert res.vector.method == f"steerx-{backbone}"


@pytest.mark.parametrize(
    ("backbone", "expected"), [("mean", [0, 2]), ("mean-context", [0, 1, 2]), ("bipo", [0, 1, 2])]
)
def test_provenance_names_the_targets_each_vector_saw(tiny_bridge, backbone, expected):
    import copy

    cfg = SteerXConfig(
        backbone=backbone,
        n_history=2,
        threshold=0.0,
        layers=[2],
        bipo={"epochs": 1, "lr": 0.05, "val_fraction": 0.0},
    )
    kw = dict(config=cfg, generic=GENERIC, progress_bar=False)
    effects = copy.deepcopy(steerx_user(tiny_bridge, CONVS, **kw).effects)
    effects[1].logp_without = effects[1].logp_with.clone()  # target 1: no effect, none selected
    res = steerx_user(tiny_bridge, CONVS, effects=effects, **kw)
    assert res.selected[1] == [] and res.selected[0] and res.selected[2]
    prov = res.provenance()
    assert [k for k, t in enumerate(prov["targets"]) if t["in_steerx"]] == expected
    assert all(t["in_all_history"] for t in prov["targets"])
