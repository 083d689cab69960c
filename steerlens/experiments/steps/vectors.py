"""Step 1, ``vectors``: population, dislike-weighted and Bradley-Terry vectors (every chosen
method) from the training pairs; PPA by projection (and under steering) against
toxicity-only, chance and (simulated sets) the oracle."""

from __future__ import annotations

import shutil
from typing import Any

from steerlens.data.schema import PreferencePair
from steerlens.experiments.claims import ppa_claims
from steerlens.experiments.personalization import personalization_study, study_split
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import (
    _Job,
    _personalization_config,
    _ppa,
)
from steerlens.experiments.study_config import PERSONAL
from steerlens.experiments.sweep import load_vectors, save_vectors
from steerlens.methods.registry import method_label


def _vectors_step(job: _Job) -> dict[str, Any]:
    cfg, ds = job.cfg, job.ds
    study = personalization_study(job.model, ds, _personalization_config(job))
    job.test_pairs = study.test_pairs
    # per-user vectors rescaled to the population vector's norms: one α grid for every method
    norms = study.population.norms()
    job.vectors = {
        m: {u: v.rescaled(norms) for u, v in vec.items()} if isinstance(vec, dict) else vec
        for m, vec in study.vectors.items()
    }
    study.population.metadata["data"] = ds.source
    shutil.rmtree(job.results / "vectors", ignore_errors=True)  # no user of an earlier study
    save_vectors(job.vectors, job.results / "vectors")
    study.table.to_csv(job.results / "ppa.csv", index=False)
    gt = job.gt
    groups = {u: v["group"] for u, v in gt["users"].items()} if gt else None
    if study.bt.rank >= 2:
        study.users_in_basis(groups).to_csv(job.results / "users_bt.csv")
    keys: dict[str, Any] = {
        "layers": job.layers,
        "n_train_pairs": study.n_train,
        "n_test_pairs": study.n_test,
        "ppa_personalized_method": method_label(PERSONAL),
    }
    for key, method in (
        ("ppa_personalized", method_label(PERSONAL)),
        ("ppa_bradley_terry", method_label("bradley-terry")),
        ("ppa_population", "population"),
        ("ppa_toxicity_only", "toxicity-only"),
        ("ppa_oracle", "oracle"),
    ):
        keys[key] = _ppa(study.table, method)
    for key, method in (  # comparisons as paired differences over the same users
        ("ppa_personalized_minus_population", f"{PERSONAL} − population"),
        ("ppa_bradley_terry_minus_population", "Bradley-Terry − population"),
        ("ppa_oracle_minus_personalized", f"oracle − {PERSONAL}"),
    ):
        keys[key] = _ppa(study.table, method, "ppa_projection_paired")
    if cfg.steer_ppa:
        keys["ppa_under_steering"] = {
            m: _ppa(study.table, method_label(m), "ppa_under_steering") for m in cfg.methods
        }
    return keys


def _read_vectors(job: _Job) -> dict[str, Any]:
    return load_vectors(job.results / "vectors", job.cfg.methods)


def _read_test_pairs(job: _Job) -> list[PreferencePair]:
    """The study's seeded split, made again (no file needed)."""
    return study_split(job.ds, _personalization_config(job))[1]


STEP = register_step(
    Step(
        "vectors",
        _vectors_step,
        StepInputs(
            (
                "methods",
                "held_out",
                "max_users",
                "steer_ppa",
                "steer_alpha",
                "run.generation_batch_size",
                "max_steer_pairs",
                "options",
            ),
            (),
        ),
        files=("ppa.csv", "users_bt.csv"),
        keys=(
            "layers",
            "n_test_pairs",
            "n_train_pairs",
            "ppa_bradley_terry",
            "ppa_bradley_terry_minus_population",
            "ppa_oracle",
            "ppa_oracle_minus_personalized",
            "ppa_personalized",
            "ppa_personalized_method",
            "ppa_personalized_minus_population",
            "ppa_population",
            "ppa_toxicity_only",
            "ppa_under_steering",
        ),
        provides={"vectors": _read_vectors, "test_pairs": _read_test_pairs},
        claims=ppa_claims,
        title="Vectors and preference accuracy",
    )
)
