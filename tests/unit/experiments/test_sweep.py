"""Sweeps: the grid, per-row cells equal single runs, resume after a kill, sharding."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import SWEEP_PROMPTS, SWEEP_SETTINGS

import steerlens as sl
from steerlens.experiments.sweep import (
    BASELINE,
    GenerationSettings,
    SweepConfig,
    SweepPrompt,
    gather,
    make_grid,
    plan,
    run_sweep,
    sweep_salt,
)

PROMPTS, SETTINGS = SWEEP_PROMPTS, SWEEP_SETTINGS  # tests/helpers.py


def _vectors(model: sl.HookedModel) -> dict:
    g = torch.Generator().manual_seed(3)
    d = model.cfg.d_model

    def vec(scale: float) -> sl.SteeringVector:
        return sl.SteeringVector(
            {1: scale * torch.randn(d, generator=g), 2: scale * torch.randn(d, generator=g)},
            model_name=sl.model_name(model),
        )

    return {"pop": vec(6.0), "personal": {"u1": vec(6.0), "u2": vec(6.0)}}


def _measure(model, rows, gen):  # cheap and deterministic: no toxicity model needed
    return {"n_tokens": [int(t.numel()) for t in gen.tokens], "first": [r.prompt[:3] for r in rows]}


def test_grid_has_one_baseline_per_prompt_and_no_alpha_zero_cells():
    cells = make_grid(PROMPTS, ["pop", "personal"], [0.0, 1.0, 2.0], ["all", "first:2"])
    base = [c for c in cells if c.method == BASELINE]
    assert len(base) == 3 and all(c.alpha == 0.0 and c.gate == "all" for c in base)
    assert len(cells) == 3 * (1 + 2 * 2 * 2)
    assert all(c.alpha != 0.0 for c in cells if c.method != BASELINE)
    assert {c.user for c in cells if c.prompt_id == "p1"} == {"u2"}  # the prompt's own user
    with pytest.raises(ValueError, match="gate"):
        make_grid(PROMPTS, ["pop"], [1.0], ["first:x"])
    with pytest.raises(ValueError, match="duplicate"):
        make_grid(PROMPTS + PROMPTS[:1], ["pop"], [1.0])
    with pytest.raises(ValueError, match="baseline"):
        make_grid(PROMPTS, [BASELINE], [1.0])


def test_plan_is_fixed_groups_gates_and_names_batches_by_content():
    cells = make_grid(PROMPTS, ["pop"], [1.0, 2.0], ["all", "prefill"])
    batches = plan(cells, SETTINGS)
    assert plan(list(reversed(cells)), SETTINGS) == batches  # order-free
    assert all(len({c.gate for c in cs}) == 1 for _, cs in batches)
    assert sorted(c.key for _, cs in batches for c in cs) == sorted(c.key for c in cells)
    other = plan(cells, GenerationSettings(max_new_tokens=6, batch_size=4, cells_per_batch=4))
    assert [b for b, _ in other] != [b for b, _ in batches]  # settings change the names


def test_each_sweep_row_equals_a_single_generate_call(tiny_bridge, tmp_path):
    vecs = _vectors(tiny_bridge)
    cells = make_grid(PROMPTS, ["pop", "personal"], [4.0], ["all", "first:1"])
    frame = run_sweep(
        tiny_bridge,
        cells,
        PROMPTS,
        vecs,
        tmp_path,
        settings=SETTINGS,
        measure=_measure,
        progress_bar=False,
    )
    assert frame is not None and len(frame) == len(cells)
    by_id = {p.prompt_id: p for p in PROMPTS}
    for _, row in frame.iterrows():
        p = by_id[row["prompt_id"]]
        if row["method"] == BASELINE:
            want = sl.generate(tiny_bridge, [p.prompt], max_new_tokens=5, progress_bar=False)
        else:
            v = vecs["pop"] if row["method"] == "pop" else vecs["personal"][row["user"]]
            want = sl.generate(
                tiny_bridge,
                [p.prompt],
                steering=v,
                alpha=row["alpha"],
                gate=sl.core.hooks.parse_gate(row["gate"]),
                max_new_tokens=5,
                progress_bar=False,
            )
        assert row["generation"] == want[0], row["key"]
    base = frame[frame["method"] == BASELINE].set_index("prompt_id")["generation"]
    steered = frame[frame["method"] != BASELINE]
    assert (steered["generation"].to_numpy() != base.loc[steered["prompt_id"]].to_numpy()).any()


def test_a_killed_sweep_resumes_to_exactly_the_uninterrupted_rows(tiny_bridge, tmp_path):
    vecs = _vectors(tiny_bridge)
    cells = make_grid(PROMPTS, ["pop", "personal"], [2.0, 5.0], ["all", "prefill"])
    full = run_sweep(
        tiny_bridge,
        cells,
        PROMPTS,
        vecs,
        tmp_path / "full",
        settings=SETTINGS,
        measure=_measure,
        progress_bar=False,
    )
    n_batches = len(plan(cells, SETTINGS))
    assert n_batches >= 4
    calls = {"n": 0}

    def dies_on_third(model, rows, gen):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return _measure(model, rows, gen)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            tiny_bridge,
            cells,
            PROMPTS,
            vecs,
            out,
            settings=SETTINGS,
            measure=dies_on_third,
            progress_bar=False,
        )
    assert len(list((out / "parts").glob("*.jsonl"))) == 2  # the finished batches only
    assert not list((out / "parts").glob(".*tmp"))
    with pytest.raises(FileNotFoundError, match="not on disk"):
        gather(out, cells, SETTINGS, sweep_salt(tiny_bridge, vecs))
    calls["n"] = 10  # no more failures; count the batches the rerun does
    resumed = run_sweep(
        tiny_bridge,
        cells,
        PROMPTS,
        vecs,
        out,
        settings=SETTINGS,
        measure=dies_on_third,
        progress_bar=False,
    )
    assert calls["n"] - 10 == n_batches - 2  # only what was missing
    # the measures have other names, so the rows' content digests differ; nothing else does
    same = full.drop(columns="content")
    pd.testing.assert_frame_equal(resumed.drop(columns="content"), same)
    assert not resumed["key"].duplicated().any()
    on_disk = pd.read_parquet(out / "cells.parquet")
    pd.testing.assert_frame_equal(on_disk.drop(columns="content"), same)


def test_other_vectors_or_model_never_reuse_old_parts(tiny_bridge, tmp_path):
    vecs = _vectors(tiny_bridge)
    cells = make_grid(PROMPTS, ["pop"], [4.0])
    first = run_sweep(
        tiny_bridge,
        cells,
        PROMPTS,
        vecs,
        tmp_path,
        settings=SETTINGS,
        measure=_measure,
        progress_bar=False,
    )
    n_parts = len(list((tmp_path / "parts").glob("*.jsonl")))
    other = {**vecs, "pop": vecs["pop"] * -1.0}
    second = run_sweep(
        tiny_bridge,
        cells,
        PROMPTS,
        other,
        tmp_path,
        settings=SETTINGS,
        measure=_measure,
        progress_bar=False,
    )
    assert len(list((tmp_path / "parts").glob("*.jsonl"))) == 2 * n_parts  # all rerun
    assert sweep_salt(tiny_bridge, vecs) != sweep_salt(tiny_bridge, other)
    steered = first["method"] != BASELINE
    assert (first.loc[steered, "generation"] != second.loc[steered, "generation"]).any()
    assert (first.loc[~steered, "generation"] == second.loc[~steered, "generation"]).all()


def test_sweep_errors_name_what_is_missing(tiny_bridge, tmp_path):
    vecs = _vectors(tiny_bridge)
    cells = make_grid(PROMPTS, ["pop", "other"], [1.0])
    with pytest.raises(ValueError, match="other"):
        run_sweep(tiny_bridge, cells, PROMPTS, vecs, tmp_path, settings=SETTINGS)
    cells = make_grid([*PROMPTS, SweepPrompt("p9", "x", "u9")], ["personal"], [1.0])
    with pytest.raises(ValueError, match="u9"):
        run_sweep(tiny_bridge, cells, [*PROMPTS, SweepPrompt("p9", "x", "u9")], vecs, tmp_path)
    with pytest.raises(ValueError, match="rank"):
        run_sweep(tiny_bridge, cells[:1], PROMPTS, vecs, tmp_path, rank=2, world=2)
    assert not list(Path(tmp_path).glob("parts/*.jsonl"))


def test_sweep_config_from_yaml_and_json(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model: tiny-random\nalphas: [0, 1.5]\ngates: [all, 'first:4']\n"
    )
    cfg = SweepConfig.from_file(tmp_path / "c.yaml")
    assert cfg.alphas == [0, 1.5] and cfg.gates == ["all", "first:4"]
    (tmp_path / "c.json").write_text(json.dumps({"model": "tiny-random", "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        SweepConfig.from_file(tmp_path / "c.json")
    with pytest.raises(ValueError, match="methods"):
        SweepConfig(methods=["nope"])
    with pytest.raises(ValueError, match="gate"):
        SweepConfig(gates=["sometimes"])


TINY_SWEEP = {
    "model": "tiny-random",
    "methods": ["population", "dislike-weighted"],
    "alphas": [0, 4.0],
    "gates": ["all", "first:1"],
    "n_prompts": 5,
    "max_new_tokens": 4,
    "run": {"batch_size": 4},
    "cells_per_batch": 6,
    "train_pairs": 40,
}


@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not (Path(sys.executable).parent / "accelerate").exists(),
    reason="accelerate is not installed",
)
def test_two_process_accelerate_sweep_equals_the_single_process_run(tmp_path):
    from steerlens.experiments.sweep import run_config

    # on the CPU whatever the machine has: two gloo processes against one CPU process
    cfg = {**TINY_SWEEP, "run": {"batch_size": 4, "device": "cpu"}}
    cfg_path = tmp_path / "sweep.json"
    cfg_path.write_text(json.dumps(cfg))
    single = run_config(SweepConfig(**{**cfg, "out": str(tmp_path / "one")}), progress_bar=False)
    assert single is not None
    launcher = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(launcher),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "steerlens.sweep",  # the documented entry point (a shim)
            str(cfg_path),
            "--out",
            str(tmp_path / "two"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    # each rank's own error lines first: the launcher's traceback comes last and is long
    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "error" in ln]
    assert proc.returncode == 0, "\n".join(errors[-30:]) + proc.stderr[-2000:]
    # both processes ran batches: "rank r/2: k of n batches" with k >= 1 for each
    assert re.search(r"rank 0/2: [1-9]\d* of", proc.stderr), proc.stderr[-2000:]
    assert re.search(r"rank 1/2: [1-9]\d* of", proc.stderr), proc.stderr[-2000:]
    merged = pd.read_parquet(tmp_path / "two" / "cells.parquet")
    pd.testing.assert_frame_equal(merged, single)


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from steerlens.experiments.sweep.distributed import _Dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        ValueError, match=r"2 processes on this .* 1 visible GPU.*--num_processes 1"
    ):
        _Dist()
    # two nodes of one GPU each: one process per GPU on each machine is fine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    import accelerate

    monkeypatch.setattr(accelerate, "PartialState", lambda cpu: _FakeState())
    assert _Dist().world == 2
    with pytest.raises(ValueError, match=r"either run\.device or device_map"):
        SweepConfig(run={"device": "cpu"}, device_map="auto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device 'gpu'"):
        SweepConfig(run={"device": "gpu"})  # type: ignore[arg-type]


class _FakeState:
    process_index, num_processes, device = 1, 2, "cuda:0"


def test_kl_calibrated_grid_gives_each_user_the_alpha_of_the_budget(tiny_bridge, tmp_path):
    from steerlens.experiments.sweep import calibrate_table
    from steerlens.metrics.summaries import dose_response_table
    from steerlens.run.divergence import steering_divergence

    vecs = _vectors(tiny_bridge)
    vecs["personal"]["u2"] = vecs["personal"]["u2"].rescaled(
        {k: 3 * v for k, v in vecs["personal"]["u2"].norms().items()}
    )
    texts = [p.prompt for p in PROMPTS]
    table = calibrate_table(tiny_bridge, vecs, [0.0, 0.05], texts)
    assert (("pop", "*", 0.05)) in table and ("personal", "u1", 0.0) not in table
    assert table[("pop", "u7", 0.05)] == table[("pop", "*", 0.05)]  # one vector for everyone
    for user in ("u1", "u2"):  # the budget is met whatever the vector's norm
        a = table[("personal", user, 0.05)]
        kls = steering_divergence(tiny_bridge, texts, vecs["personal"][user], a)
        assert sum(d.kl for d in kls) / len(kls) == pytest.approx(0.05, rel=0.03)
    assert table[("personal", "u1", 0.05)] > 2 * table[("personal", "u2", 0.05)]
    cells = make_grid(
        PROMPTS, ["pop", "personal"], [0.0, 0.05], calibrated=lambda m, u, b: table[(m, u, b)]
    )
    steered = [c for c in cells if c.method != BASELINE]
    assert all(c.kl_budget == 0.05 and c.alpha == table[(c.method, c.user, 0.05)] for c in steered)
    # the key names the budget and the α it was calibrated to (a new calibration: new parts)
    assert all(f"|kl0.05@{c.alpha:.6g}|" in c.key for c in steered)
    frame = run_sweep(
        tiny_bridge,
        cells,
        PROMPTS,
        vecs,
        tmp_path,
        settings=SETTINGS,
        measure=_measure,
        progress_bar=False,
    )
    assert frame is not None
    rows = frame.assign(abs_error=0.0, toxicity=0.0, perplexity=1.0, degenerate=False, empty=False)
    dose = dose_response_table(rows, dose="kl_budget")
    assert sorted(dose["kl_budget"]) == [0.0, 0.0, 0.05, 0.05]
    personal = dose[(dose["method"] == "personal") & (dose["kl_budget"] == 0.05)].iloc[0]
    want = (table[("personal", "u1", 0.05)] * 2 + table[("personal", "u2", 0.05)]) / 3
    assert personal["alpha"] == pytest.approx(want)  # p0, p2 are u1's prompts, p1 is u2's
    with pytest.raises(ValueError, match="KL-calibrated"):
        dose_response_table(rows.assign(kl_budget=None), dose="kl_budget")
    with pytest.raises(ValueError, match="alpha_mode"):
        SweepConfig(alpha_mode="norm")  # type: ignore[arg-type]


def test_run_config_in_kl_mode_calibrates_once_and_saves_it_with_the_vectors(tmp_path):
    from steerlens.experiments.sweep import load_vectors, run_config

    cfg = SweepConfig(
        **{
            **TINY_SWEEP,
            "gates": ["all"],
            "alphas": [0, 0.05],
            "alpha_mode": "kl",
            "kl_texts": 2,
            "out": str(tmp_path),
        }
    )
    frame = run_config(cfg, progress_bar=False)
    assert frame is not None
    steered = frame[frame["method"] != BASELINE]
    assert (steered["kl_budget"] == 0.05).all()
    saved = load_vectors(tmp_path / "vectors", cfg.methods)
    for (m, u), a in steered.groupby(["method", "user"])["alpha"].first().items():
        v = saved[m] if m == "population" else saved[m][u]
        (entry,) = v.metadata["kl_alpha"].values()
        assert entry["alpha"] == a  # the cell's α is the one cached in the saved vector
    assert steered.groupby("method")["alpha"].nunique()["dislike-weighted"] > 1  # per user


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_with_the_old_flat_keys_loads_into_the_sections(tmp_path, suffix, caplog):
    """A sweep file as written before the sections (2026-12-05: seed, device, batch size,
    rank, C and shrink at the top level) loads into ``run`` and ``options`` with a
    deprecation notice, and equals the same file written with the sections."""
    import yaml

    from steerlens.experiments.config import RunSection
    from steerlens.methods.options import MethodOptions

    flat = {
        "model": "tiny-random",
        "methods": ["population", "bradley-terry"],
        "alphas": [0.0, 0.5],
        "seed": 3,
        "device": "cpu",
        "batch_size": 4,
        "rank": 2,
        "C": 0.5,
        "shrink": 1.0,
    }
    nested = {
        "model": "tiny-random",
        "methods": ["population", "bradley-terry"],
        "alphas": [0.0, 0.5],
        "run": {"seed": 3, "device": "cpu", "batch_size": 4},
        "options": {"rank": 2, "C": 0.5, "shrink": 1.0},
    }
    dump = yaml.safe_dump if suffix == ".yaml" else json.dumps
    (tmp_path / f"old{suffix}").write_text(dump(flat))
    (tmp_path / f"new{suffix}").write_text(dump(nested))
    with pytest.warns(DeprecationWarning, match=r"top-level seed, device, batch_size, rank, C"):
        old = SweepConfig.from_file(tmp_path / f"old{suffix}")
    assert "run.seed, run.device, run.batch_size, options.rank" in caplog.text
    new = SweepConfig.from_file(tmp_path / f"new{suffix}")
    assert old == new
    assert old.run == RunSection(seed=3, device="cpu", batch_size=4)
    assert old.options == MethodOptions(rank=2, C=0.5, shrink=1.0)
    # generation decodes run.generation_batch_size rows together; batch_size is the other passes'
    assert old.settings.batch_size == old.run.generation_batch_size == 64
    wide = SweepConfig(model="tiny-random", run={"batch_size": 4, "generation_batch_size": 8})
    assert (wide.run.batch_size, wide.settings.batch_size) == (4, 8)
    for bad in ({"batch_size": 0}, {"generation_batch_size": 0}):
        with pytest.raises(ValueError, match="generation_batch_size must be >= 1"):
            RunSection(**bad)
    # a key given twice is an error, as is an unknown one (nothing is silently dropped)
    (tmp_path / f"both{suffix}").write_text(dump({**nested, "seed": 4}))
    with pytest.raises(ValueError, match="seed is given both"), pytest.warns(DeprecationWarning):
        SweepConfig.from_file(tmp_path / f"both{suffix}")
    (tmp_path / f"typo{suffix}").write_text(dump({**nested, "sead": 4}))
    with pytest.raises(ValueError, match=r"unknown options \['sead'\]"):
        SweepConfig.from_file(tmp_path / f"typo{suffix}")


def test_a_condition_gate_by_name_steers_only_the_rows_it_selects(tiny_bridge, tmp_path):
    """``gates: [condition]``: each row equals a single ``generate`` call with the condition;
    its projection and decision are columns; the condition is part of every batch's name."""
    vecs = _vectors(tiny_bridge)
    d = torch.randn(tiny_bridge.cfg.d_model, generator=torch.Generator().manual_seed(8))
    probe = sl.generate(
        tiny_bridge,
        [p.prompt for p in PROMPTS],
        steering=vecs["pop"],
        gate=sl.Condition(d, 1, 0.0),
        max_new_tokens=1,
        return_tokens=True,
        progress_bar=False,
    )
    cut = sorted(probe.projections)[1] + 1e-3
    conditions = {"condition": sl.Condition(d, 1, cut)}
    cells = make_grid(PROMPTS, ["pop"], [6.0], ["condition", "condition&first:1"])
    frame = run_sweep(
        tiny_bridge,
        cells,
        PROMPTS,
        vecs,
        tmp_path,
        settings=SETTINGS,
        measure=_measure,
        conditions=conditions,
        progress_bar=False,
    )
    assert frame is not None
    steered = frame[frame["method"] != BASELINE]
    on = steered["steered"].astype(bool)
    assert on.any() and not on.all()
    assert (on == (steered["projection"] > cut)).all()
    by_id = {p.prompt_id: p for p in PROMPTS}
    for _, row in steered.iterrows():
        position, _ = sl.core.conditions.parse_gate_name(row["gate"])
        want = sl.generate(
            tiny_bridge,
            [by_id[row["prompt_id"]].prompt],
            steering=vecs["pop"],
            alpha=6.0,
            gate=conditions["condition"] & position,
            max_new_tokens=5,
            progress_bar=False,
        )
        assert row["generation"] == want[0], row["key"]
    base = frame[frame["method"] == BASELINE].set_index("prompt_id")["generation"]
    off = steered[~on]
    assert (off["generation"].to_numpy() == base.loc[off["prompt_id"]].to_numpy()).all()
    other = {"condition": conditions["condition"].with_threshold(cut + 1.0)}
    assert sweep_salt(tiny_bridge, vecs, _measure, conditions) != sweep_salt(
        tiny_bridge, vecs, _measure, other
    )
    with pytest.raises(ValueError, match="names condition"):
        run_sweep(tiny_bridge, cells, PROMPTS, vecs, tmp_path, settings=SETTINGS)
    with pytest.raises(ValueError, match="add it to conditions"):
        SweepConfig(gates=["condition"])


def _sweep(model, cells, vectors, out, measure, reuse=()):
    return run_sweep(
        model,
        cells,
        PROMPTS,
        vectors,
        out,
        settings=SETTINGS,
        measure=measure,
        reuse=reuse,
        progress_bar=False,
    )


class _Counting:
    """``_measure`` that counts the rows it measures."""

    fingerprint = "counting v1"

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, model, rows, gen):
        self.rows += len(rows)
        return _measure(model, rows, gen)


def test_cells_that_steer_the_same_positions_run_once(tiny_bridge, tmp_path):
    # first:0 is prefill, first:K past the generated length is all: each pair is one row
    vecs = _vectors(tiny_bridge)
    gates = ["all", "prefill", "first:0", f"first:{SETTINGS.max_new_tokens}", "first:2"]
    cells = make_grid(PROMPTS, ["pop"], [3.0], gates, baseline=False)
    counting = _Counting()
    frame = _sweep(tiny_bridge, cells, vecs, tmp_path / "s", counting)
    assert len(frame) == len(cells) and counting.rows == 3 * len(PROMPTS)  # all, prefill, first:2
    by = {g: frame[frame["gate"] == g].set_index("prompt_id") for g in gates}
    for same, twin in (("prefill", "first:0"), ("all", f"first:{SETTINGS.max_new_tokens}")):
        assert (by[same]["generation"] == by[twin]["generation"]).all()
        assert (by[same]["content"] == by[twin]["content"]).all()
    # the copies are the generations a sweep of that gate alone makes
    alone = _sweep(
        tiny_bridge,
        make_grid(PROMPTS, ["pop"], [3.0], ["first:0"], baseline=False),
        vecs,
        tmp_path / "alone",
        _Counting(),
    )
    assert list(alone.set_index("prompt_id").loc[by["first:0"].index, "generation"]) == list(
        by["first:0"]["generation"]
    )
    assert (by["first:2"]["content"] != by["prefill"]["content"]).all()


def test_a_sweep_copies_rows_another_sweep_made_with_the_same_content(tiny_bridge, tmp_path):
    vecs = _vectors(tiny_bridge)
    first = _sweep(
        tiny_bridge, make_grid(PROMPTS, ["pop"], [2.0]), vecs, tmp_path / "a", _Counting()
    )
    # the same vector under another name, at the same α and at a new one, plus the baseline
    renamed = {"again": vecs["pop"], "pop": vecs["pop"]}
    cells = make_grid(PROMPTS, ["again"], [2.0, 4.0])
    counting = _Counting()
    second = _sweep(tiny_bridge, cells, renamed, tmp_path / "b", counting, reuse=[first])
    assert counting.rows == len(PROMPTS)  # only α 4 ran; α 2 and the baselines were copied
    fresh = _sweep(tiny_bridge, cells, renamed, tmp_path / "c", _Counting())
    pd.testing.assert_frame_equal(second, fresh)  # keys, methods, texts and measures alike
    assert set(second.loc[second["alpha"] == 2.0, "content"]) <= set(first["content"])
    # another measure (or model, engine, version, prompt record) never matches
    other = _Counting()
    other.fingerprint = "counting v2"
    _sweep(tiny_bridge, cells, renamed, tmp_path / "d", other, reuse=[first])
    assert other.rows == len(cells)


def test_a_copy_needs_the_same_layers_condition_and_measured_columns(tiny_bridge, tmp_path):
    vecs = _vectors(tiny_bridge)
    pop = vecs["pop"]
    first = _sweep(tiny_bridge, make_grid(PROMPTS, ["pop"], [2.0]), vecs, tmp_path / "a", _Sparse())
    # the same directions at other layers, or carrying a condition, are other vectors
    moved = sl.SteeringVector(
        {2: pop.directions[1], 3: pop.directions[2]}, model_name=pop.model_name
    )
    cond = sl.Condition(torch.ones(tiny_bridge.cfg.d_model), 1, -1e9)  # fires on every prompt
    for other in (moved, pop.conditioned(cond)):
        counting = _Sparse()
        _sweep(
            tiny_bridge,
            make_grid(PROMPTS, ["v"], [2.0], baseline=False),
            {"v": other},
            tmp_path / f"b{id(other)}",
            counting,
            reuse=[first],
        )
        assert counting.rows == len(PROMPTS)
    # rows read back from the gathered parquet (a column some rows lack is NaN there) copy
    # into the rows a fresh run makes
    cells = make_grid(PROMPTS, ["again"], [2.0])
    back = pd.read_parquet(tmp_path / "a" / "cells.parquet")
    assert back["odd"].isna().any()
    counting = _Sparse()
    copied = _sweep(tiny_bridge, cells, {"again": pop}, tmp_path / "c", counting, reuse=[back])
    assert counting.rows == 0
    fresh = _sweep(tiny_bridge, cells, {"again": pop}, tmp_path / "d", _Sparse())
    pd.testing.assert_frame_equal(copied, fresh)
    rows = [
        json.loads(x)
        for p in sorted((tmp_path / "c" / "parts").glob("*.jsonl"))
        for x in p.read_text().splitlines()
    ]
    assert all(("odd" in r) == (r["prompt_id"] != "p2") for r in rows)  # as generated


class _Sparse(_Counting):
    """``_Counting`` with a column only some batches have (NaN in the gathered frame)."""

    fingerprint = "sparse v1"

    def __call__(self, model, rows, gen):
        out = super().__call__(model, rows, gen)
        if any(r.prompt_id == "p1" for r in rows):  # a batch holding p1: every row
            out["odd"] = [1.5] * len(rows)
        return out
