"""The ``steerlens`` command: ``info``, ``generate``, ``vectors``, ``sweep``, ``effects``,
``steerx``, ``train-sae``, ``demo``, ``report``, ``serve``, ``explore``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from steerlens.core._jsonsafe import update_json
from steerlens.methods.registry import BACKBONES, METHODS, MethodOptions, get_backbone, get_method

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


def _mean(s: dict, key: str) -> str:  # type: ignore[type-arg]
    """A summary estimate's mean to 3 decimals ("–" where the step did not run)."""
    v = (s.get(key) or {}).get("mean")
    return "–" if v is None else f"{v:.3f}"


def parse_gate(text: str):  # type: ignore[no-untyped-def]
    """``all``, ``prefill``, ``generated`` or ``first:K`` (prompt + first K generated tokens)."""
    from steerlens.core.hooks import parse_gate as _parse

    try:
        return _parse(text)
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


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _study_choices(methods: str | None, steps: str | None, from_step: str | None) -> dict[str, Any]:
    """``DemoConfig`` fields from ``--methods``, ``--steps`` (run these, finished or not) and
    ``--from`` (rerun this step and every later one)."""
    chosen: dict[str, Any] = {}
    if methods:
        chosen["methods"] = _names(methods)
    if steps and from_step:
        raise typer.BadParameter("give --steps or --from, not both")
    if steps:
        chosen["steps"] = chosen["force"] = _names(steps)
    if from_step:
        from steerlens.experiments.steps import step_names

        names = step_names()
        if from_step not in names:
            raise typer.BadParameter(f"--from {from_step!r}: use one of {', '.join(names)}")
        chosen["force"] = list(names[names.index(from_step) :])
    return chosen


@app.command()
def demo(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick/--full",
            help="--quick (default): every step, small (fewer users, prompts, α, K); "
            "--full: the whole study",
        ),
    ] = True,
    model: ModelOpt = "smollm2-135m-instruct",
    data: Annotated[str, typer.Option(help="demo (simulated set), hf, or a PRISM folder")] = "demo",
    out: Annotated[Path, typer.Option(help="writes OUT/results/ and OUT/figures/")] = Path("."),
    steerx: Annotated[
        bool, typer.Option(help="also SteerX vs all-history per backbone (reconstructed)")
    ] = True,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, ... (default: CUDA if any)")
    ] = None,
    seed: Annotated[int, typer.Option(help="the run's seed (splits, sampling, bootstrap)")] = 0,
    methods: Annotated[
        str | None,
        typer.Option(
            help="comma-separated registered vector methods (aliases accepted; population is "
            f"needed); default: {', '.join(METHODS)}"
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help="comma-separated steps to run, rerun even where finished; default: every "
            "step, skipping those finished in OUT with the same inputs",
        ),
    ] = None,
    from_step: Annotated[
        str | None,
        typer.Option("--from", help="rerun this step and every step after it"),
    ] = None,
    png: Annotated[
        bool | None,
        typer.Option(
            "--png/--no-png",
            help="also export the figures as PNG (needs Chromium; default: with --full only, "
            "the HTML figures always; `steerlens report --run OUT --png` adds them later)",
        ),
    ] = None,
) -> None:
    """The study: vectors, PPA, α sweep per method, gating, MMLU, SteerX vs all-history,
    figures, report page (small by default; --full for the whole study)."""
    from steerlens.experiments.demo import DemoConfig, run_demo
    from steerlens.reporting.study import write_study_report
    from steerlens.reporting.tables import est

    logging.getLogger("steerlens").setLevel(logging.INFO)
    from steerlens.experiments.config import RunSection

    chosen = _study_choices(methods, steps, from_step)
    cfg = DemoConfig(
        model=model,
        data=data,
        out=str(out),
        quick=quick,
        steerx=steerx,
        run=RunSection(seed=seed, device=device),
        **chosen,
    )
    s = run_demo(cfg)
    start = time.perf_counter()
    files = write_study_report(out, png=not quick if png is None else png)
    seconds = {**s["seconds"], "report": round(time.perf_counter() - start, 1)}
    update_json(out / "results" / "summary.json", {"seconds": seconds})
    table = Table(
        "method",
        "alpha",
        "MAE",
        "ΔMAE % [95 % CI]",
        "perplexity",
        "degenerate",
        "utility gain",
        title=f"{model} on {s['data']}" + (" (simulated data)" if s["data_is_simulated"] else ""),
    )
    for r in s["dose_response"]:
        table.add_row(
            r["method"],
            f"{r['alpha']:g}",
            f"{r['mae']:.4f}",
            est(r["delta_pct"], r.get("delta_low"), r.get("delta_high"), signed=True, n=r.get("n")),
            f"{r['ppl']:.2f}",
            f"{r['degenerate_share']:.2f}",
            f"{r['utility_gain']:+.3f}" if "utility_gain" in r else "-",
        )
    console.print(table)
    console.print(
        f"operating α {s['operating_alpha']:g}; PPA personalised {_mean(s, 'ppa_personalized')}, "
        f"population {_mean(s, 'ppa_population')}, "
        f"toxicity-only {_mean(s, 'ppa_toxicity_only')}; "
        f"MMLU {_mean(s, 'mmlu_unsteered')} -> {_mean(s, 'mmlu_steered')}"
    )
    if s.get("steerx_ppa"):
        console.print(
            "SteerX (reconstructed) vs all-history, PPA by projection: "
            + ", ".join(
                f"{b} {v['mean']:.3f} vs {s['allhistory_ppa'][b]['mean']:.3f}"
                for b, v in s["steerx_ppa"].items()
            )
        )
    console.print(
        f"wrote {len(files)} report files under {out} in "
        f"{seconds['total'] + seconds['report']:.0f} s; open {out / 'figures' / 'index.html'}"
    )


# `steerlens study` is the same command (the study is what `demo` has always run)
app.command("study", help="The study: the same command as `steerlens demo`.")(demo)


@app.command()
def report(
    markdown: Annotated[
        bool,
        typer.Option("--markdown", help="the Markdown result pages (docs/results) instead"),
    ] = False,
    run: Annotated[Path, typer.Option(help="the run's folder (holds results/)")] = Path("."),
    out: Annotated[Path, typer.Option(help="folder for the Markdown pages")] = Path("docs/results"),
    png: Annotated[
        bool,
        typer.Option("--png/--no-png", help="the figures as PNG too (needs Chromium)"),
    ] = True,
) -> None:
    """The report of a run, drawn from RUN/results/ alone (a partial run too): the page
    RUN/figures/index.html with its figures, or with --markdown the pages under OUT."""
    from steerlens.reporting.markdown import write_results_pages
    from steerlens.reporting.study import write_study_report

    try:
        pages = (
            write_results_pages(run / "results", out)
            if markdown
            else write_study_report(run, png=png)
        )
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(f"wrote {len(pages)} file(s): {pages[-1]}")


@app.command()
def serve(
    vectors: Annotated[
        Path, typer.Option(help="folder of <name>.safetensors vectors (conditions/ beside)")
    ],
    model: Annotated[str, typer.Argument(help="a steerlens model name or an HF folder")] = (
        "smollm2-135m-instruct"
    ),
    port: int = 8000,
    host: Annotated[str, typer.Option(help="127.0.0.1 unless told otherwise")] = "127.0.0.1",
    dtype: Annotated[str, typer.Option(help="auto: float32 on CPU, the model's on GPU")] = "auto",
    max_alpha: Annotated[float, typer.Option(help="refuse requests with a larger |α|")] = 1e4,
    conditions: Annotated[
        bool,
        typer.Option(
            "--conditions/--no-conditions",
            help="serve conditions (chunked prefill off; --no-conditions keeps it on)",
        ),
    ] = True,
) -> None:
    """vLLM's OpenAI-compatible server, each request steered by its own vector: put
    {"user": NAME, "vllm_xargs": {"steer_alpha": 4, "steer_gate": "first:8"}} in the body
    (``sl.serve.request_args``). Needs vLLM (the serve extra; make test-serve)."""
    from steerlens.serve.server import serve as run_server

    try:
        code = run_server(
            model,
            vectors,
            port=port,
            host=host,
            dtype=dtype,
            max_alpha=max_alpha,
            conditions=conditions,
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise typer.BadParameter(str(e)) from None
    raise typer.Exit(code)


@app.command()
def explore(
    run: Annotated[
        Path | None,
        typer.Option(help="a study's folder (holds results/) or its results/, or a sweep's folder"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="default: the run's model, else smollm2-135m-instruct"),
    ] = None,
    vectors: Annotated[
        Path | None, typer.Option(help="a folder of *.safetensors / *.gguf vectors")
    ] = None,
    port: int = 8050,
    host: Annotated[str, typer.Option(help="127.0.0.1 unless told otherwise")] = "127.0.0.1",
) -> None:
    """The live workbench in the browser (offline): a prompt, a vector and an α ladder side
    by side with the unsteered reply, token by token; users, conditions and the run's
    figures, each point clickable; the view in the URL, exports as code. Needs Dash (the
    explore extra, in the lock)."""
    from steerlens.explore.app import app as explore_app

    try:
        page = explore_app(run=run, model=model, vectors=vectors)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise typer.BadParameter(str(e)) from None
    console.print(f"steerlens explore on http://{host}:{port}/ (Ctrl-C stops it)")
    try:
        page.run(host=host, port=port, debug=False)
    except OSError as e:  # the port is taken
        raise typer.BadParameter(f"cannot serve on {host}:{port}: {e}") from None


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="a sweep config (.yaml / .json)")],
    out: Annotated[Path | None, typer.Option(help="the sweep's folder (overrides)")] = None,
) -> None:
    """A resumable grid of steered generations (method x α x gate x prompt) from a config.

    Rerun the same command to resume. Several processes:
    ``accelerate launch -m steerlens.sweep CONFIG``.
    """
    from steerlens.experiments.sweep import SweepConfig, run_config

    logging.getLogger("steerlens").setLevel(logging.INFO)
    try:
        cfg = SweepConfig.from_file(config)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if out is not None:
        cfg.out = str(out)
    frame = run_config(cfg)
    if frame is not None:  # rank 0 (or the only process) gathered the cells
        console.print(f"{len(frame)} cells in {Path(cfg.out) / 'cells.parquet'}")


@app.command()
def vectors(
    method: Annotated[
        str, typer.Option(help=f"{' | '.join(METHODS)} (aliases: dislike, bt)")
    ] = "population",
    user: Annotated[list[str] | None, typer.Option(help="a user id; repeat for several")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help="one vector per user")] = False,
    out: Annotated[Path, typer.Option(help="folder for the vector files")] = Path("vectors"),
    model: ModelOpt = "smollm2-135m-instruct",
    data: Annotated[str, typer.Option(help="demo (simulated set), hf, or a PRISM folder")] = "demo",
    layers: Annotated[
        list[int] | None, typer.Option(help="repeat; default: research depth")
    ] = None,
    rank: Annotated[int, typer.Option(help="Bradley-Terry basis size")] = MethodOptions.rank,
    shrink: Annotated[
        float, typer.Option(help="pull toward the population: n/(n+shrink); 0 turns it off")
    ] = MethodOptions.shrink,
    gguf: Annotated[
        bool, typer.Option("--gguf", help="also write llama.cpp / repeng GGUF")
    ] = False,
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            help="also write: gguf (llama.cpp / repeng), lm-eval (lm-evaluation-harness "
            "steer_path .pt); repeat for several",
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="the steering coefficient written into lm-eval files")
    ] = 1.0,
    batch_size: int = 16,
) -> None:
    """Build steering vectors from a PRISM-format set's turn-0 pairs and write them to OUT.

    One pair-activation table is cached once; every vector is reduced from it.
    """
    import steerlens as sl

    extra = set(formats or [])
    if extra - {"gguf", "lm-eval"}:
        raise typer.BadParameter(f"--format must be gguf or lm-eval, not {sorted(extra)}")
    try:
        chosen = get_method(method)
        opts = MethodOptions(rank=rank, shrink=shrink)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if chosen.per_user and not (user or all_users):
        raise typer.BadParameter(f"--method {method} needs --user ID or --all-users")
    m = sl.load_model(model)
    ds = sl.data.load_prism(data)
    pairs = ds.preference_pairs(turn0_only=True)
    unknown = sorted(set(user or []) - {p.user_id for p in pairs})
    if unknown:
        raise typer.BadParameter(f"no pairs for user(s) {unknown} in {data}")
    pa = sl.methods.pair_activations(m, pairs, layers, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    fitted = chosen.fit(pa, opts)
    if isinstance(fitted.state, sl.methods.BradleyTerry):
        fitted.state.coordinates.to_csv(out / "bt_coordinates.csv")
    targets = pa.users if all_users else list(user or [])
    built: list[tuple[str, sl.SteeringVector]] = (
        [(f"{chosen.name}-{u}", fitted.vector(u)) for u in targets]
        if chosen.per_user
        else [(chosen.name, fitted.vector(""))]
    )
    for name, vec in built:
        vec.metadata.update({"data": data, "source": "steerlens vectors"})
        vec.save(out / f"{name}.safetensors")
        if gguf or "gguf" in extra:
            vec.to_gguf(out / f"{name}.gguf")
        if "lm-eval" in extra:
            vec.to_lm_eval(out / f"{name}.pt", alpha=alpha)
    console.print(f"wrote {len(built)} vector(s) to {out} ({len(pa)} pairs, layers {pa.layers})")


@app.command()
def effects(
    user: Annotated[str, typer.Option(help="a user id of the set")],
    model: ModelOpt = "smollm2-135m-instruct",
    data: Annotated[str, typer.Option(help="demo (simulated set) or a PRISM folder")] = "demo",
    n_history: Annotated[int, typer.Option(help="history conversations per target")] = 4,
    targets: Annotated[int, typer.Option(help="chosen responses to explain")] = 2,
    counterfactual: Annotated[
        str, typer.Option(help="none (NextQuill) or placebo (the next user's history)")
    ] = "none",
    threshold: Annotated[float, typer.Option(help="CE above which a token is kept")] = 0.05,
    out: Annotated[Path | None, typer.Option(help="write every token's effect as CSV")] = None,
) -> None:
    """SteerX (reconstructed): the causal effect of a user's history on each token of their
    chosen responses; prints the preference-driven tokens (CE > threshold)."""
    import pandas as pd

    import steerlens as sl
    from steerlens.metrics.token_truth import user_queries

    if counterfactual not in ("none", "placebo"):
        raise typer.BadParameter("--counterfactual must be none or placebo")
    m = sl.load_model(model)
    ds = sl.data.load_prism(data)
    if user not in ds.users:
        raise typer.BadParameter(f"no user {user!r} in {data}")
    order = sorted(ds.users)
    nxt = order[(order.index(user) + 1) % len(order)]
    qs = user_queries(ds, n_history=n_history, targets_per_user=targets, users=[user, nxt])
    qs = [q for q in qs if q.user_id == user]
    effs = sl.steerx.batch_history_effects(
        m,
        [
            (q.prompt, q.response, q.history, q.placebo if counterfactual == "placebo" else None)
            for q in qs
        ],
    )
    frames = []
    for k, (q, e) in enumerate(zip(qs, effs, strict=True)):
        keep = e.select(threshold=threshold)
        console.print(f"[bold]{q.prompt}[/bold]")
        console.print(
            "".join(f"[reverse]{t}[/reverse]" if i in keep else t for i, t in enumerate(e.tokens))
        )
        frames.append(e.to_frame().assign(target=k, prompt=q.prompt))
    if out is not None:
        pd.concat(frames).to_csv(out, index=False)
        console.print(f"wrote {out}")


@app.command("train-sae")
def train_sae_cmd(
    layer: Annotated[int | None, typer.Option(help="default: the middle steering layer")] = None,
    model: ModelOpt = "smollm2-135m-instruct",
    out: Annotated[Path | None, typer.Option(help="default: ~/.cache/steerlens/sae/...")] = None,
    d_sae: int = 2048,
    k: int = 32,
    steps: int = 1500,
    n_texts: Annotated[int | None, typer.Option(help="cap on the offline texts")] = None,
) -> None:
    """Train a small TopK SAE (sae-lens) on the model's activations from offline text (the
    shipped set's responses, MMLU questions) and report its reconstruction quality."""
    from steerlens.methods.sae_train import default_sae_dir, ensure_sae, require_sae_lens

    require_sae_lens("steerlens train-sae")
    import steerlens as sl

    m = sl.load_model(model)
    lyr = layer if layer is not None else sl.default_layers(m)[len(sl.default_layers(m)) // 2]
    folder = out or default_sae_dir(sl.model_name(m) or model, lyr)
    _, rep = ensure_sae(m, lyr, folder=folder, n_texts=n_texts, d_sae=d_sae, k=k, steps=steps)
    console.print(
        f"SAE at {folder}: layer {rep.layer}, d_sae {rep.d_sae}, k {rep.k}, "
        f"explained variance {rep.explained_variance:.3f}, L0 {rep.l0:.1f}, "
        f"dead {100 * rep.dead_share:.1f} % ({rep.n_train_tokens} training tokens)"
    )


@app.command()
def steerx(
    user: Annotated[str, typer.Option(help="a user id of the set")],
    backbone: Annotated[
        str, typer.Option(help=f"one of {' | '.join(BACKBONES)} (the method registry)")
    ] = "mean",
    model: ModelOpt = "smollm2-135m-instruct",
    data: Annotated[str, typer.Option(help="demo (simulated set) or a PRISM folder")] = "demo",
    out: Annotated[Path, typer.Option(help="folder for the vectors and provenance")] = Path(
        "steerx"
    ),
    describe: Annotated[str, typer.Option(help="spans (model-free) or model")] = "spans",
    sae: Annotated[Path | None, typer.Option(help="an SAE folder (sae backbone)")] = None,
) -> None:
    """SteerX (reconstructed) for one user: effects -> selection -> description -> vector, and
    the all-history baseline through the same backbone, saved with provenance."""
    import steerlens as sl
    from steerlens.methods.sae_train import ensure_sae, load_sae, require_sae_lens
    from steerlens.metrics.token_truth import user_queries

    try:
        spec = get_backbone(backbone)
    except ValueError:
        raise typer.BadParameter(f"--backbone must be one of {', '.join(BACKBONES)}") from None
    if spec.extra == "sae":
        require_sae_lens("steerlens steerx --backbone sae")  # before the model loads
    m = sl.load_model(model)
    ds = sl.data.load_prism(data)
    if user not in ds.users:
        raise typer.BadParameter(f"no user {user!r} in {data}")
    qs = user_queries(ds, n_history=0, targets_per_user=10_000, users=[user])
    convs = [(q.prompt, q.response) for q in qs if q.user_id == user]
    cfg = sl.steerx.SteerXConfig(backbone=backbone, describe=describe)  # type: ignore[arg-type]
    sae_obj = None
    layers = sl.default_layers(m)
    if spec.layers == "middle":  # as the SteerX study steers it
        cfg.layers = [layers[len(layers) // 2]]
    if backbone == "sae":
        sae_obj = load_sae(sae) if sae else ensure_sae(m, layers[len(layers) // 2])[0]
    res = sl.steerx.steerx_user(m, convs, user=user, config=cfg, sae=sae_obj)
    folder = res.save(out / user / backbone)
    console.print(f"[bold]description[/bold]: {res.description.text}")
    console.print(f"wrote {folder} (steerx.safetensors, all_history.safetensors, provenance.json)")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
