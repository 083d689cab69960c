"""No stale rows: a sweep part's name holds a fingerprint of what defines its rows (the
measure's code version and parameters, its ground truth, the decoding engine, the steerlens
version); a change recomputes the rows, an unchanged rerun reads them back."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from helpers import SWEEP_PROMPTS, SWEEP_SETTINGS

import steerlens as sl
from steerlens.experiments.sweep import (
    engine_name,
    make_grid,
    measure_fingerprint,
    run_sweep,
    standard_measures,
    sweep_salt,
)
from steerlens.experiments.sweep import measures as measures_module

PROMPTS, SETTINGS = SWEEP_PROMPTS, SWEEP_SETTINGS  # tests/helpers.py
ATTRS = ("toxicity", "refusal", "caution", "length", "formality")


def _vectors(model: sl.HookedModel) -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    d = model.cfg.d_model
    return {
        "pop": sl.SteeringVector(
            {1: 6.0 * torch.randn(d, generator=g), 2: 6.0 * torch.randn(d, generator=g)},
            model_name=sl.model_name(model),
        )
    }


def _ground_truth(sign: float) -> dict[str, Any]:
    """A simulated set's ground truth: the users like (sign 1) or dislike (-1) formal text."""
    return {
        "attribute_mean": dict.fromkeys(ATTRS, 0.0),
        "attribute_std": dict.fromkeys(ATTRS, 1.0),
        "users": {u: {"weights": {"formality": sign, "length": sign}} for u in ("u1", "u2")},
    }


class Offset:
    """A measure with a parameter and a fingerprint: its numbers are n_tokens + k."""

    def __init__(self, k: int) -> None:
        self.k, self.calls = k, 0

    @property
    def fingerprint(self) -> str:
        return f"offset={self.k}"

    def __call__(self, model: Any, rows: Any, gen: Any) -> dict[str, list[Any]]:
        self.calls += 1
        return {"score": [int(t.numel()) + self.k for t in gen.tokens]}


class Const:
    """A toxicity scorer giving one value to every text."""

    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def __call__(self, texts: Any) -> list[float]:
        return [self.value] * len(texts)


def _plain(model: Any, rows: Any, gen: Any) -> dict[str, list[Any]]:
    return {"n_tokens": [int(t.numel()) for t in gen.tokens]}


def _parts(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.jsonl")}


def _sweep(model: sl.HookedModel, out: Path, measure: Any) -> pd.DataFrame:
    cells = make_grid(PROMPTS, ["pop"], [4.0])  # 6 cells: 2 batches
    frame = run_sweep(
        model,
        cells,
        PROMPTS,
        _vectors(model),
        out,
        settings=SETTINGS,
        measure=measure,
        progress_bar=False,
    )
    assert frame is not None and len(frame) == len(cells)
    return frame


def test_fingerprints_name_what_defines_a_row(monkeypatch):
    gt = _ground_truth(1.0)
    fp = measure_fingerprint(standard_measures(gt, batch_size=16))
    # batching only: the same numbers, the same parts
    assert measure_fingerprint(standard_measures(gt, batch_size=2)) == fp
    assert measure_fingerprint(standard_measures(dict(reversed(gt.items())))) == fp  # key order
    others = [
        standard_measures(),
        standard_measures(_ground_truth(-1.0)),
        standard_measures(gt, Const("const", 0.5)),
        standard_measures(gt, chat=False),
    ]
    fps = {measure_fingerprint(m) for m in others}
    assert len(fps) == len(others) and fp not in fps
    monkeypatch.setattr(measures_module, "MEASURE_VERSION", measures_module.MEASURE_VERSION + 1)
    assert measure_fingerprint(standard_measures(gt)) != fp  # a code change (version bump)
    # a plain function: its module and name only
    assert measure_fingerprint(_plain) == f"{__name__}._plain"
    assert measure_fingerprint(Offset(1)) != measure_fingerprint(Offset(2))
    p1, p2 = functools.partial(_plain), functools.partial(_plain, k=1)
    assert measure_fingerprint(p1) != measure_fingerprint(p2)


def test_an_unchanged_sweep_recomputes_nothing(tiny_bridge, tmp_path):
    first = Offset(1)
    frame = _sweep(tiny_bridge, tmp_path, first)
    assert first.calls == 2
    parts = _parts(tmp_path)
    assert len(parts) == 2
    again = Offset(1)  # another object, the same fingerprint
    pd.testing.assert_frame_equal(_sweep(tiny_bridge, tmp_path, again), frame)
    assert again.calls == 0 and _parts(tmp_path) == parts  # read back, not rewritten
    # the standard measures: another batch_size reuses the parts too
    gt = _ground_truth(1.0)
    std = _sweep(tiny_bridge, tmp_path / "std", standard_measures(gt, batch_size=4))
    parts = _parts(tmp_path / "std")
    rerun = _sweep(tiny_bridge, tmp_path / "std", standard_measures(gt, batch_size=1))
    pd.testing.assert_frame_equal(rerun, std)
    assert _parts(tmp_path / "std") == parts


def test_a_changed_measure_parameter_recomputes_its_rows(tiny_bridge, tmp_path):
    first = _sweep(tiny_bridge, tmp_path, Offset(1))
    changed = Offset(100)
    second = _sweep(tiny_bridge, tmp_path, changed)
    assert changed.calls == 2 and len(_parts(tmp_path)) == 4  # every batch again
    assert (second["score"] == first["score"] + 99).all()  # the new numbers, none stale
    # a parameter of the standard measures: the toxicity scorer
    low = _sweep(tiny_bridge, tmp_path / "std", standard_measures(scorer=Const("low", 0.1)))
    high = _sweep(tiny_bridge, tmp_path / "std", standard_measures(scorer=Const("high", 0.9)))
    assert (low["toxicity"] == 0.1).all() and (high["toxicity"] == 0.9).all()


def test_a_changed_ground_truth_recomputes_the_utility(tiny_bridge, tmp_path):
    likes = _sweep(tiny_bridge, tmp_path, standard_measures(_ground_truth(1.0), batch_size=4))
    parts = _parts(tmp_path)
    dislikes = _sweep(tiny_bridge, tmp_path, standard_measures(_ground_truth(-1.0), batch_size=4))
    assert len(_parts(tmp_path)) == 2 * len(parts)
    assert (likes["utility"] != 0).any()
    pd.testing.assert_series_equal(dislikes["utility"], -likes["utility"])
    fresh = _sweep(tiny_bridge, tmp_path / "fresh", standard_measures(_ground_truth(-1.0)))
    pd.testing.assert_frame_equal(dislikes, fresh)
    # the generations did not change: only what was measured of them
    pd.testing.assert_series_equal(dislikes["generation"], likes["generation"])


def test_a_changed_package_version_or_engine_recomputes(tiny_bridge, tmp_path, monkeypatch):
    from steerlens.core.engines import hf as hf_engine

    frame = _sweep(tiny_bridge, tmp_path, Offset(1))
    salt = sweep_salt(tiny_bridge, _vectors(tiny_bridge), Offset(1))
    from steerlens.core import _version

    monkeypatch.setattr(_version, "__version__", "999.0")
    newer = Offset(1)
    again = _sweep(tiny_bridge, tmp_path, newer)
    # the same rows; their content digests name the version they were made by
    pd.testing.assert_frame_equal(again.drop(columns="content"), frame.drop(columns="content"))
    assert not set(again["content"]) & set(frame["content"])
    assert newer.calls == 2 and len(_parts(tmp_path)) == 4
    assert sweep_salt(tiny_bridge, _vectors(tiny_bridge), Offset(1)) != salt
    # the engine: "auto" resolves to the fast path here; forced onto TransformerLens
    assert engine_name(tiny_bridge, _vectors(tiny_bridge)) == "auto:hook_resid_post=hf"
    monkeypatch.setattr(hf_engine, "fast_path_blocker", lambda model, hook="": "forced")
    assert engine_name(tiny_bridge, _vectors(tiny_bridge)) == "auto:hook_resid_post=tl"
    on_tl = Offset(1)
    again = _sweep(tiny_bridge, tmp_path, on_tl)
    pd.testing.assert_frame_equal(again.drop(columns="content"), frame.drop(columns="content"))
    assert on_tl.calls == 2 and len(_parts(tmp_path)) == 6
