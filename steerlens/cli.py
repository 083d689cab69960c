"""The ``steerlens`` command: ``info``, ``generate``, ``vectors``, ``demo``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Personalised activation steering."
)
console = Console()

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="smollm2-135m-instruct, tiny-random or an HF name")
]
BackendOpt = Annotated[
    str, typer.Option(help="bridge (TransformerBridge) or hooked (HookedTransformer)")
]


def parse_gate(text: str):  # type: ignore[no-untyped-def]
    """``all``, ``prefill``, ``generated`` or ``first:K`` (prompt + first K generated tokens)."""
    from steerlens.hooks import FirstK, Gate

    if text.startswith("first:"):
        try:
            return FirstK(int(text.split(":", 1)[1]))
        except ValueError as exc:
            raise typer.BadParameter(f"bad gate {text!r}: use first:K with an integer K") from exc
    try:
        return Gate.parse(text)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@app.command()
def info(model: ModelOpt = "smollm2-135m-instruct", backend: BackendOpt = "bridge") -> None:
    """Model class, size and default steering layers."""
    import steerlens as sl

    m = sl.load_model(model, backend=backend)  # type: ignore[arg-type]
    param = next(m.parameters())
    table = Table(title=f"steerlens info: {model}", show_header=False)
    for key, value in [
        ("class", type(m).__name__),
        ("layers", m.cfg.n_layers),
        ("d_model", m.cfg.d_model),
        ("vocab", m.cfg.d_vocab),
        ("default steering layers", sl.default_layers(m)),
        ("default hook", "blocks.{l}.hook_resid_post (output of block l, counted from 0)"),
        ("device", param.device),
        ("dtype", param.dtype),
    ]:
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def generate(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="repeat for several prompts")],
    vector: Annotated[
        Path | None, typer.Option(help="a steering-vector file (.safetensors or .gguf)")
    ] = None,
    alpha: Annotated[list[float] | None, typer.Option(help="strength; repeat for a sweep")] = None,
    gate: Annotated[str, typer.Option(help="all | prefill | generated | first:K")] = "all",
    model: ModelOpt = "smollm2-135m-instruct",
    backend: BackendOpt = "bridge",
    max_new_tokens: int = 64,
    chat: Annotated[bool, typer.Option("--chat/--no-chat")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
) -> None:
    """Generate, optionally steered; with several --alpha, every prompt at every strength."""
    import steerlens as sl

    m = sl.load_model(model, backend=backend)  # type: ignore[arg-type]
    alphas = alpha or [1.0]
    vec = None
    if vector is not None:
        vec = (
            sl.SteeringVector.from_gguf(vector)
            if vector.suffix == ".gguf"
            else sl.SteeringVector.load(vector)
        )
    elif alpha:
        raise typer.BadParameter("--alpha needs --vector")
    rows = [(p, a) for p in prompt for a in (alphas if vec is not None else [0.0])]
    texts = sl.generate(
        m,
        [p for p, _ in rows],
        steering=vec,
        alpha=[a for _, a in rows] if vec is not None else 1.0,
        gate=parse_gate(gate),
        max_new_tokens=max_new_tokens,
        chat=chat,
    )
    if as_json:
        for (p, a), t in zip(rows, texts, strict=True):
            typer.echo(
                json.dumps(
                    {"prompt": p, "alpha": a if vec is not None else None, "gate": gate, "text": t}
                )
            )
        return
    table = Table("prompt", "alpha", "generation", show_lines=True)
    for (p, a), t in zip(rows, texts, strict=True):
        table.add_row(p, f"{a:g}" if vec is not None else "-", t)
    console.print(table)


@app.command()
def demo(
    quick: Annotated[
        bool, typer.Option(help="a few minutes on CPU: fewer pairs, prompts and alphas")
    ] = False,
    model: ModelOpt = "smollm2-135m-instruct",
    data: Annotated[str, typer.Option(help="demo (simulated set), hf, or a PRISM folder")] = "demo",
    out: Annotated[Path, typer.Option(help="writes OUT/results/ and OUT/figures/")] = Path("."),
) -> None:
    """The main job: population CAA, an alpha sweep, toxicity MAE, perplexity, figures."""
    from steerlens.demo import DemoConfig, run_demo

    logging.getLogger("steerlens").setLevel(logging.INFO)
    summary = run_demo(DemoConfig(model=model, data=data, out=str(out), quick=quick))
    table = Table(
        "alpha",
        "MAE",
        "ΔMAE %",
        "toxicity",
        "perplexity",
        "distinct-2",
        "degenerate",
        title=f"{model} on {summary['data']}"
        + (" (simulated data)" if summary["data_is_simulated"] else ""),
    )
    for row in summary["by_alpha"]:
        table.add_row(
            f"{row['alpha']:g}",
            f"{row['mae']:.4f}",
            f"{row['mae_change_pct']:+.1f}",
            f"{row['toxicity']:.4f}",
            f"{row['ppl']:.2f}",
            f"{row['distinct_2']:.2f}",
            f"{row['degenerate_share']:.2f}",
        )
    console.print(table)
    console.print(f"wrote {len(summary['files'])} files under {out} in {summary['seconds']:.0f} s")


@app.command()
def vectors(
    method: Annotated[str, typer.Option(help="population | dislike | bt")] = "population",
    user: Annotated[list[str] | None, typer.Option(help="a user id; repeat for several")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help="one vector per user")] = False,
    out: Annotated[Path, typer.Option(help="folder for the vector files")] = Path("vectors"),
    model: ModelOpt = "smollm2-135m-instruct",
    data: Annotated[str, typer.Option(help="demo (simulated set), hf, or a PRISM folder")] = "demo",
    layers: Annotated[
        list[int] | None, typer.Option(help="repeat; default: research depth")
    ] = None,
    rank: Annotated[int, typer.Option(help="Bradley-Terry basis size")] = 8,
    shrink: Annotated[float, typer.Option(help="pull toward the population: n/(n+shrink)")] = 0.0,
    gguf: Annotated[
        bool, typer.Option("--gguf", help="also write llama.cpp / repeng GGUF")
    ] = False,
    batch_size: int = 16,
) -> None:
    """Build steering vectors from a PRISM-format set's turn-0 pairs and write them to OUT.

    One pair-activation table is cached once; every vector is reduced from it.
    """
    import steerlens as sl

    if method not in ("population", "dislike", "bt"):
        raise typer.BadParameter(f"--method must be population, dislike or bt, not {method!r}")
    if method != "population" and not (user or all_users):
        raise typer.BadParameter(f"--method {method} needs --user ID or --all-users")
    m = sl.load_model(model)
    ds = sl.data.load_prism(data)
    pairs = ds.preference_pairs(turn0_only=True)
    unknown = sorted(set(user or []) - {p.user_id for p in pairs})
    if unknown:
        raise typer.BadParameter(f"no pairs for user(s) {unknown} in {data}")
    pa = sl.methods.pair_activations(m, pairs, layers, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    targets = pa.users if all_users else list(user or [])
    built: list[tuple[str, sl.SteeringVector]] = []
    if method == "population":
        built.append(("population", sl.methods.population(pa)))
    elif method == "dislike":
        built += [
            (f"dislike-{u}", sl.methods.dislike_weighted(pa, u, shrink=shrink)) for u in targets
        ]
    else:
        bt = sl.methods.bradley_terry(pa, rank)
        bt.coordinates.to_csv(out / "bt_coordinates.csv")
        built += [(f"bt-{u}", bt.user_vector(u, shrink=shrink)) for u in targets]
    for name, vec in built:
        vec.metadata.update({"data": data, "source": "steerlens vectors"})
        vec.save(out / f"{name}.safetensors")
        if gguf:
            vec.to_gguf(out / f"{name}.gguf")
    console.print(f"wrote {len(built)} vector(s) to {out} ({len(pa)} pairs, layers {pa.layers})")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
