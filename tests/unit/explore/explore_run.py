"""A small study folder on the tiny random model for the explorer's tests: the vectors and
dose steps of the demo (about 4 s) plus a condition file, as a study writes them."""

from __future__ import annotations

from pathlib import Path

import torch

import steerlens as sl
from steerlens.experiments.demo import DemoConfig, run_demo

TINY_RUN = dict(
    model="tiny-random",
    alphas=[0.0, 4.0, 8.0],
    kl_alphas=[4.0, 8.0],
    neutral_texts=4,
    kl_texts=2,
    n_prompts=8,
    max_users=6,
    max_new_tokens=5,
    max_steer_pairs=12,
    cells_per_batch=16,
    gating_ks=[0, 2],
    steps=["vectors", "dose", "gating"],
)


def make_run(folder: Path) -> Path:
    run_demo(DemoConfig(**TINY_RUN, out=str(folder)))  # type: ignore[arg-type]
    model = sl.load_model("tiny-random")
    g = torch.Generator().manual_seed(3)
    cond = sl.Condition(torch.randn(model.cfg.d_model, generator=g), layer=1, threshold=0.0)
    where = folder / "results" / "vectors" / "conditions"
    where.mkdir(parents=True, exist_ok=True)
    cond.save(where / "condition.safetensors")
    return folder


def blocking_ladder(monkeypatch, release, stage: str = "stage one") -> None:
    """Make the explorer's ladder report ``stage``, wait for ``release``, report the next
    stage (where a cancel stops it) and then run the real ladder."""
    from steerlens.explore import session

    real = session.run_ladder

    def slow(model, state, vector, **kw):
        kw["progress"](stage)
        release.wait(20)
        kw["progress"]("the next stage")
        return real(model, state, vector, **kw)

    monkeypatch.setattr(session, "run_ladder", slow)
