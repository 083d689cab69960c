"""Resumable, shardable grids of steered generations: (vector method, user, α, gate, prompt).

A sweep is a list of ``Cell`` s. ``plan`` cuts them into batches in one fixed order (cells of a
batch share a gate; their vectors and α differ row by row, so 48 users x several α run as one
batched job). Each finished batch is written to ``OUT/parts/<batch>.jsonl`` with one atomic
rename: a run killed at any point loses at most the batch in flight, and a rerun skips every
batch already on disk — no lost rows, no duplicated rows. Batch names hash their cells, the
generation settings and a fingerprint of everything else a row depends on (model, vectors, the
measure's code version and parameters, its ground truth, the decoding engine, the steerlens
version: ``sweep_salt``), so a changed grid, setting or measure never reuses stale parts.

``accelerate launch -m steerlens.sweep CONFIG`` gives batch ``b`` to process ``b mod N`` (data
parallel, one model per process/GPU); rank 0 gathers the parts into one ``OUT/cells.parquet``.
The batches are the same whatever the number of processes, so the gathered file equals a
single-process run's row for row. A model larger than one GPU boots with ``device_map`` in a
single process.
"""

from steerlens.experiments.sweep.grid import (
    BASELINE,
    Cell,
    GenerationSettings,
    SweepPrompt,
    VectorTable,
    held_out_prompts,
    make_grid,
    plan,
)
from steerlens.experiments.sweep.job import (
    DOSE_ALPHAS,
    SweepConfig,
    dose_sweep_config,
    main,
    run_config,
    script_arguments,
)
from steerlens.experiments.sweep.measures import (
    MEASURE_VERSION,
    Measure,
    StandardMeasures,
    measure_fingerprint,
    standard_measures,
)
from steerlens.experiments.sweep.runner import engine_name, gather, run_sweep, sweep_salt
from steerlens.experiments.sweep.vectors import (
    build_rescaled_vectors,
    calibrate_table,
    load_conditions,
    load_vectors,
    save_conditions,
    save_vectors,
)

__all__ = [
    "BASELINE",
    "DOSE_ALPHAS",
    "MEASURE_VERSION",
    "Cell",
    "GenerationSettings",
    "Measure",
    "StandardMeasures",
    "SweepConfig",
    "SweepPrompt",
    "VectorTable",
    "build_rescaled_vectors",
    "calibrate_table",
    "dose_sweep_config",
    "engine_name",
    "gather",
    "held_out_prompts",
    "load_conditions",
    "load_vectors",
    "main",
    "make_grid",
    "measure_fingerprint",
    "plan",
    "run_config",
    "run_sweep",
    "save_conditions",
    "save_vectors",
    "script_arguments",
    "standard_measures",
    "sweep_salt",
]
