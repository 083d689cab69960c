"""Save, share, export: a workbench state as a link, JSON, Python, a ``steerlens generate``
command and a ``sweep.yaml`` block, and its vector as a file (safetensors, GGUF, lm-eval).
Every export carries the provenance strip (model, hook, layers, method, seed, engine,
steerlens version)."""

from __future__ import annotations

import json
import shlex
import tempfile
from pathlib import Path
from typing import Any, Literal

from steerlens.core.vectors import SteeringVector

from .state import ExploreState, number

__all__ = [
    "EXPORT_FORMATS",
    "as_command",
    "as_python",
    "as_sweep_yaml",
    "provenance_line",
    "vector_bytes",
]

EXPORT_FORMATS = {"safetensors": ".safetensors", "gguf": ".gguf", "lm-eval": ".pt"}
VectorFormat = Literal["safetensors", "gguf", "lm-eval"]


def provenance_line(prov: dict[str, Any]) -> str:
    """One line: ``model · hook · layers · method · seed · engine · steerlens``."""
    layers = prov.get("layers") or []
    span = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else ",".join(map(str, layers))
    parts = [
        f"model {prov.get('model')}",
        f"hook {prov.get('hook')}",
        f"layers {span}",
        f"method {prov.get('method')}",
        f"vector {prov.get('vector')}",
        f"gate {prov.get('gate')}",
        f"seed {prov.get('seed')}",
        f"engine {prov.get('engine')}",
        f"steerlens {prov.get('steerlens')}",
    ]
    if prov.get("condition"):
        parts.append(f"condition @ layer {prov['condition'].get('layer')}")
    return " · ".join(parts)


def _header(prov: dict[str, Any], comment: str) -> str:
    return f"{comment} steerlens explore: {provenance_line(prov)}"


def _gate_code(gate: str) -> str:
    return f"sl.FirstK({int(gate.split(':')[1])})" if gate.startswith("first:") else repr(gate)


def as_python(
    state: ExploreState, vector_file: str, alphas: list[float], prov: dict[str, Any]
) -> str:
    """The same generations in research code."""
    select = f".select({list(state.layers)})" if state.layers else ""
    threshold = (
        f"\nvec = vec.conditioned(vec.condition.with_threshold({state.threshold!r}))"
        if state.threshold is not None
        else ""
    )
    return "\n".join(
        [
            _header(prov, "#"),
            "import steerlens as sl",
            "",
            f"model = sl.load_model({prov.get('model')!r})",
            f"vec = sl.SteeringVector.load({vector_file!r}){select}{threshold}",
            f"prompt = {state.prompt!r}",
            f"alphas = {alphas!r}",
            "texts = sl.generate(",
            "    model,",
            "    [prompt] * len(alphas),",
            "    steering=vec,",
            "    alpha=alphas,",
            f"    gate={_gate_code(state.gate)},",
            f"    chat={state.chat!r},",
            f"    max_new_tokens={state.max_new_tokens},",
            ")",
            "",
        ]
    )


def as_command(
    state: ExploreState, vector_file: str, alphas: list[float], prov: dict[str, Any]
) -> str:
    """A ``steerlens generate`` command (the CLI steers every layer of the file: a layer
    choice is noted, not applied)."""
    words = [
        "steerlens",
        "generate",
        "--model",
        str(prov.get("model")),
        "-p",
        state.prompt,
        "--vector",
        vector_file,
    ]
    for a in alphas:
        words += ["--alpha", number(a)]
    words += [
        "--gate",
        state.gate,
        "--max-new-tokens",
        str(state.max_new_tokens),
        "--chat" if state.chat else "--no-chat",
    ]
    note = (
        f"  # layers {list(state.layers)}: save the vector with those layers"
        if state.layers
        else ""
    )
    return _header(prov, "#") + "\n" + shlex.join(words) + note + "\n"


def as_sweep_yaml(
    state: ExploreState, vector_file: str, alphas: list[float], prov: dict[str, Any]
) -> str:
    """A ``sweep.yaml`` block sweeping the same vector, α and gate over a set's prompts."""
    name = Path(vector_file).stem
    lines = [
        _header(prov, "#"),
        f"model: {json.dumps(prov.get('model'))}",
        "methods: []",
        "vector_files:",
        f"  {json.dumps(name)}: {json.dumps(vector_file)}",
        f"alphas: {json.dumps(alphas)}",
        f"gates: [{json.dumps(state.gate)}]",
        f"max_new_tokens: {state.max_new_tokens}",
    ]
    if state.layers:
        lines.append(f"layers: {json.dumps(list(state.layers))}")
    lines += ["run:", f"  seed: {state.seed}", f"# prompt explored: {json.dumps(state.prompt)}", ""]
    return "\n".join(lines)


def vector_bytes(
    vector: SteeringVector, fmt: VectorFormat, prov: dict[str, Any], *, alpha: float = 1.0
) -> tuple[str, bytes]:
    """The vector as a file of ``fmt``: (file name, content). A safetensors file holds the
    provenance in its metadata (and the condition); GGUF and lm-eval files hold the
    directions only (lm-eval's with ``alpha`` as its coefficient)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format: one of {sorted(EXPORT_FORMATS)}, got {fmt!r}")
    vec = SteeringVector(
        dict(vector.directions),
        model_name=vector.model_name,
        hook=vector.hook,
        method=vector.method,
        metadata={
            **vector.metadata,
            "explore": {k: v for k, v in prov.items() if k != "condition"},
        },
        condition=vector.condition if fmt == "safetensors" else None,
    )
    stem = str(prov.get("vector", "vector")).replace("/", "-").replace("\\", "-")
    stem = Path(stem).stem or "vector"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{stem}{EXPORT_FORMATS[fmt]}"
        if fmt == "safetensors":
            vec.save(path)
        elif fmt == "gguf":
            vec.to_gguf(path)
        else:
            vec.to_lm_eval(path, alpha=alpha)
        return path.name, path.read_bytes()
