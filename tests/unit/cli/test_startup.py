"""Start-up: `import steerlens` and the CLI's help load neither torch nor TransformerLens (each
checked in a fresh interpreter); the public names are the same and each resolves on first use.
The seconds are measured by `make bench` (benchmarks/startup.py), never asserted here."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "transformer_lens", "sae_lens", "pandas", "plotly")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.split()


def test_import_steerlens_loads_no_heavy_module():
    assert _loaded_after("import steerlens, steerlens.methods") == []


@pytest.mark.parametrize(
    "args",
    [["--help"], ["generate", "--help"], ["sweep", "--help"], ["demo", "--help"], ["gnerate"]],
    ids=lambda a: " ".join(a),
)
def test_cli_help_and_a_typo_load_no_heavy_module(args):
    typo = args == ["gnerate"]
    code = (
        "from typer.testing import CliRunner\n"
        "from steerlens.cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        f"assert r.exit_code == {2 if typo else 0}, r.output\n"
        f"assert {'No such command' if typo else 'Usage:'!r} in r.output, r.output"
    )
    assert _loaded_after(code) == []


def test_figures_load_no_model_stack():
    assert not {"torch", "transformer_lens"} & set(_loaded_after("import steerlens.plots"))


def test_submodules_resolve_on_first_use():
    """Every submodule is reachable as an attribute after a bare import, as with eager imports."""
    code = (
        "import steerlens as sl\n"
        "assert callable(sl.metrics.stats.cluster_estimate)\n"
        "assert callable(sl.run.scoring.continuation_logprobs)\n"
        "assert callable(sl.core.hooks.parse_gate)"
    )
    _loaded_after(code)  # raises (check=True) where an attribute is missing


def test_first_use_loads_what_it_needs():
    assert {"torch", "transformer_lens"} <= set(
        _loaded_after("import steerlens\nsteerlens.generate")
    )


EXPECTED = {
    "ActivationStore", "Condition", "DEFAULT_MODEL", "FirstK", "Gate", "Generation", "HookedModel",
    "SteeringHandle", "SteeringVector", "__version__", "active_steering", "add_vector_hook",
    "cache_activations", "calibrate_alpha", "continuation_logprobs", "data", "default_layers",
    "encode_prompts", "evaluation", "explore", "generate", "hook_name", "load_model", "methods",
    "model_name", "plots", "resid_post", "resid_pre", "response_masks", "serve", "steering",
    "steering_divergence", "steering_hooks", "steerx", "tokens",
}  # fmt: skip


def test_public_names_resolve_and_are_listed():
    import steerlens as sl
    from steerlens.core import hooks, models, vectors
    from steerlens.run import generation

    assert set(sl.__all__) == EXPECTED
    assert set(dir(sl)) >= EXPECTED
    for name in sl.__all__:
        assert getattr(sl, name) is not None, name
    assert sl.SteeringVector is vectors.SteeringVector and sl.generate is generation.generate
    assert sl.FirstK is hooks.FirstK and sl.load_model is models.load_model
    import steerlens.methods.bipo  # binds the submodule on the package: the function stays

    assert sl.methods.bipo.__module__ == "steerlens.methods.bipo"  # the function, not its module
    assert callable(sl.methods.bipo)
    from steerlens import FirstK, plots  # from-imports work as on any module

    assert FirstK is hooks.FirstK and plots.dose_response.__module__.endswith("reporting.plots")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sl.nope  # noqa: B018


def test_each_lazy_package_lists_exactly_what_it_resolves():
    import steerlens
    import steerlens.methods

    assert set(steerlens.__all__) == {*steerlens._NAMES, *steerlens._MODULES, "__version__"}
    assert set(steerlens.methods.__all__) == set(steerlens.methods._NAMES)
    for name in steerlens.methods.__all__:
        assert callable(getattr(steerlens.methods, name)), name
