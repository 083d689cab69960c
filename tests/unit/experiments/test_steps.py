"""The study's steps come from one registry: a step added by CONTRIBUTING.md's recipe runs,
resumes, lands in steps.json and on the page; the runner, the config's step list, the
fingerprints and the report's file map are all read from the registry."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from steerlens.experiments import claims
from steerlens.experiments.demo import DemoConfig, run_demo
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steps import MODULES, REGISTRY, Step, get_step, register_step
from steerlens.reporting.markdown import PAGE_LINES, summary_markdown
from steerlens.reporting.study import _step_of

ROOT = Path(__file__).resolve().parents[3]
SMALL = dict(
    model="tiny-random",
    alphas=[0.0, 4.0],
    kl_alphas=[4.0],
    n_prompts=4,
    max_users=4,
    max_new_tokens=5,
    mmlu_items=8,
    cells_per_batch=16,
    neutral_texts=4,
    kl_texts=2,
)


def _recipe() -> str:
    """The Python block of CONTRIBUTING.md's "Adding a step to the study"."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## Adding a step to the study", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "CONTRIBUTING.md's step recipe has no python block"
    return match.group(1)


@pytest.fixture
def registry_restored():
    before = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


def test_the_contributing_recipe_adds_a_step_that_runs_resumes_and_reports(
    tmp_path, registry_restored
):
    exec(compile(_recipe(), "CONTRIBUTING.md", "exec"), {"__name__": "contrib_step"})
    assert list(REGISTRY)[-1] == "prompt_lengths" and _step_of("prompt_lengths.json") == (
        "prompt_lengths"
    )
    steps = ["vectors", "dose", "prompt_lengths"]
    assert "prompt_lengths" in DemoConfig().steps  # every registered step, by default
    s = run_demo(DemoConfig(**SMALL, out=str(tmp_path), steps=steps))
    prompts = (tmp_path / "results" / "prompts.jsonl").read_text().splitlines()
    chars = sum(len(json.loads(line)["prompt"]) for line in prompts)
    assert s["prompt_chars"] == chars
    entries = json.loads((tmp_path / "results" / "steps.json").read_text())
    assert list(entries) == steps and entries["prompt_lengths"]["status"] == "done"
    assert entries["prompt_lengths"]["files"] == ["prompt_lengths.json"]
    assert entries["prompt_lengths"]["keys"] == ["prompt_chars"]
    page = summary_markdown(s)
    assert "| prompt_lengths |" in page  # its time on the page
    # its section, after the steps before it: no page code needed (a table of its keys)
    assert f"## Prompt lengths\n\n| key | value |\n|---|---|\n| `prompt_chars` | {chars} |" in page
    assert page.index("## Prompt lengths") > page.index("## Dose-response")
    # resumed: finished with the same inputs, skipped; asked for by name (force), rerun
    calls: list[str] = []
    for name in steps:
        step = REGISTRY[name]
        REGISTRY[name] = replace(
            step, run=lambda job, n=name, f=step.run: (calls.append(n), f(job))[1]
        )
    again = run_demo(DemoConfig(**SMALL, out=str(tmp_path), steps=steps))
    assert calls == [] and again["prompt_chars"] == chars
    run_demo(DemoConfig(**SMALL, out=str(tmp_path), steps=steps, force=["prompt_lengths"]))
    assert calls == ["prompt_lengths"]  # its need read back by the dose step's reader


def test_a_step_reads_what_an_earlier_job_made_through_the_step_that_makes_it(
    tmp_path, registry_restored, caplog
):
    """The disk fallback comes from ``Step.provides``: a need no step has made says which
    step to run; a key a step returns without declaring it is logged."""

    def lengths(job):
        return {"n_prompts_seen": len(job.need("prompts")), "undeclared": 1}

    register_step(Step("lengths", lengths, StepInputs(needs=("dose",)), keys=("n_prompts_seen",)))
    with pytest.raises(RuntimeError, match="run the step 'dose' that makes it first"):
        run_demo(DemoConfig(**SMALL, out=str(tmp_path), steps=["lengths"]))
    run_demo(DemoConfig(**SMALL, out=str(tmp_path), steps=["vectors", "dose"]))
    with caplog.at_level(logging.WARNING, logger="steerlens.experiments.demo"):
        s = run_demo(DemoConfig(**SMALL, out=str(tmp_path), steps=["lengths"]))
    assert s["n_prompts_seen"] == len((tmp_path / "results/prompts.jsonl").read_text().splitlines())
    assert "does not declare (Step.keys): ['undeclared']" in caplog.text


def test_the_registry_checks_what_a_step_declares(registry_restored):
    def run(job):
        return {}

    with pytest.raises(ValueError, match="needs \\['nowhere'\\]"):
        register_step(Step("late", run, StepInputs(needs=("nowhere",))))
    with pytest.raises(ValueError, match="registered already"):
        register_step(Step("dose", run))
    with pytest.raises(ValueError, match="identifier"):
        Step("two words", run)
    with pytest.raises(
        ValueError, match=r"declares summary keys of other steps: \{'gating': 'gating'\}"
    ):
        register_step(Step("gates_again", run, keys=("gating",)))
    with pytest.raises(ValueError, match="provides what other steps"):
        register_step(Step("prompts_again", run, provides={"prompts": run}))
    with pytest.raises(ValueError, match="unknown step 'plots'"):
        get_step("plots")
    with pytest.raises(ValueError, match="unknown steps"):
        DemoConfig(steps=["vectors", "plots"])
    # the built-in steps: one module each, registered in MODULES' order
    assert tuple(REGISTRY) == MODULES
    assert all(REGISTRY[m].run.__module__.endswith(f"steps.{m}") for m in MODULES)
    assert _step_of("gating.csv") == "gating" and _step_of("summary.json") is None
    # the page has a section for every step, and names no step the registry lacks
    assert set(PAGE_LINES) <= set(REGISTRY)
    # every claim builder is a step's, and the headline is theirs in the registry's order
    assert {s.claims.__name__ for s in REGISTRY.values() if s.claims} == {
        n for n in claims.__all__ if n.endswith("_claims")
    }


def test_a_step_without_page_lines_gets_a_table_of_the_keys_it_declares():
    from steerlens.reporting.markdown import step_lines

    summary = {"prompt_count": {"mean": 1.5, "interval": [1.0, 2.0], "n": 6, "unit": "user"}}
    step = Step("toy", lambda job: {}, keys=("prompt_*",), title="Toy")
    assert step.writes_key("prompt_count") and not step.writes_key("prompts")
    assert step_lines(step, summary)[-2] == "| `prompt_count` | 1.5 [1, 2] (n = 6) |"
    assert step_lines(step, {"other": 1}) == []
