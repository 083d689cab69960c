"""Train a small TopK SAE with sae-lens on a model's residual stream, from offline text.

No pretrained SAE exists for the embedded model, so steerlens trains one: token activations
at one layer (``cache_activations(pool="none")``, template and special tokens left out) over
offline text — the shipped set's responses and MMLU questions — feed sae-lens' ``SAETrainer``
(a ``TopKTrainingSAE``) directly. The SAE is saved with sae-lens' own format
(``save_inference_model``) outside the repository (``~/.cache/steerlens/sae/...`` by
default) and reloaded with ``sae_lens.SAE.load_from_disk``; its reconstruction quality
(explained variance, L0, dead latents on held-out tokens) is reported beside it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from steerlens.core.models import HookedModel
from steerlens.core.tokens import non_special_mask, tokenize
from steerlens.run.cache import cache_activations

__all__ = [
    "SAE_EXTRA",
    "SAEReport",
    "default_sae_dir",
    "ensure_sae",
    "load_sae",
    "require_sae_lens",
    "sae_lens_available",
    "sae_text",
    "save_sae",
    "token_activations",
    "train_sae",
]


@dataclass
class SAEReport:
    layer: int
    d_sae: int
    k: int
    n_train_tokens: int
    n_eval_tokens: int
    explained_variance: float
    l0: float
    dead_share: float  # latents that never fire on the held-out tokens


SAE_EXTRA = "steerlens[sae]"


def _sae_lens_problem() -> str | None:
    """Why sae-lens cannot be used here (not installed, or installed beside a TransformerLens
    its own requirements exclude), or None. Read from the installed metadata: nothing is
    imported."""
    from importlib import metadata

    from packaging.requirements import Requirement

    from steerlens.core._tl import tl_version

    if importlib.util.find_spec("sae_lens") is None:
        return f"needs sae-lens, an optional extra: pip install '{SAE_EXTRA}'"
    try:
        requires = metadata.requires("sae-lens") or []
    except metadata.PackageNotFoundError:  # importable without its metadata: nothing to check
        requires = []
    for line in requires:
        req = Requirement(line)
        if req.name == "transformer-lens" and not req.specifier.contains(tl_version(), True):
            return (
                f"needs sae-lens, whose version {metadata.version('sae-lens')} requires "
                f"transformer-lens{req.specifier}, but transformer-lens {tl_version()} is "
                f"installed: use an environment made with pip install '{SAE_EXTRA}'"
            )
    return None


def sae_lens_available() -> bool:
    """Whether sae-lens (the optional extra ``steerlens[sae]``) is installed and usable with
    the installed TransformerLens."""
    return _sae_lens_problem() is None


def require_sae_lens(what: str = "training or loading an SAE") -> None:
    """Raise an ``ImportError`` naming the extra to install when sae-lens is missing or does not
    accept the installed TransformerLens."""
    problem = _sae_lens_problem()
    if problem is not None:
        raise ImportError(
            f"{what} {problem}. sae-lens 6 requires TransformerLens < 4, so the extra keeps "
            "TransformerLens at 3.9. Without it, the sae backbone takes any SAE-like object "
            "(encode, W_dec) passed as sae=..."
        )


def default_sae_dir(model_name: str, layer: int) -> Path:
    base = Path(os.environ.get("STEERLENS_CACHE", Path.home() / ".cache" / "steerlens"))
    return base / "sae" / model_name.replace("/", "--") / f"layer{layer}"


def sae_text(n_mmlu: int = 1000, seed: int = 0) -> list[str]:
    """Offline text: the shipped simulated set's response texts and MMLU questions."""
    from steerlens.data import load_mmlu, load_prism

    ds = load_prism("demo")
    texts = sorted({u.model_response for u in ds.utterances if u.model_response})
    texts += [it.question for it in load_mmlu(n=n_mmlu, seed=seed)]
    random.Random(seed).shuffle(texts)
    return texts


def token_activations(
    model: HookedModel,
    texts: Sequence[str],
    layer: int,
    *,
    batch_size: int = 16,
    progress_bar: bool = True,
) -> Tensor:
    """``[tokens, d_model]``: the activation at ``layer`` of every token of the texts (raw
    text) except special tokens and each text's first position: BOS and the first token act
    as attention sinks with residual norms orders of magnitude above the rest, which would
    dominate the SAE's loss and make its explained variance meaningless."""
    ids = tokenize(model, list(texts))
    masks = []
    for x in ids:
        m = non_special_mask(model, x)
        m[0] = False
        masks.append(m)
    acts = cache_activations(
        model,
        ids,
        [layer],
        pool="none",
        masks=masks,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    assert isinstance(acts, list)
    return torch.cat([a[0] for a in acts]).float()


def _batches(acts: Tensor, size: int, seed: int) -> Iterator[Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randperm(len(acts), generator=g)
        for i in range(0, len(idx) - size + 1, size):
            yield acts[idx[i : i + size]]


def train_sae(
    acts: Tensor,
    *,
    layer: int,
    d_sae: int = 2048,
    k: int = 32,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 1e-3,
    eval_share: float = 0.1,
    seed: int = 0,
) -> tuple[Any, SAEReport]:
    """Train a ``TopKTrainingSAE`` on ``acts`` ([tokens, d_model]); return it and its report
    on a held-out share of the tokens."""
    require_sae_lens("train_sae")
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if acts.ndim != 2 or len(acts) < 2 * batch_size:
        raise ValueError(f"need [tokens, d_model] with >= {2 * batch_size} tokens")
    torch.manual_seed(seed)
    perm = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))
    n_eval = max(1, int(eval_share * len(acts)))
    held, train = acts[perm[:n_eval]], acts[perm[n_eval:]]
    cfg = TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k, dtype="float32")
    sae = TopKTrainingSAE(cfg)
    tcfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        device="cpu",
        n_batches_for_norm_estimate=10,
    )
    sae = SAETrainer(tcfg, sae, _batches(train, batch_size, seed)).fit()
    with torch.no_grad():
        feats = sae.encode(held)
        rec = sae.decode(feats)
        var = ((held - held.mean(0)) ** 2).sum()
        ev = float(1 - ((rec - held) ** 2).sum() / var)
        l0 = float((feats > 0).sum(-1).float().mean())
        dead = float(((feats > 0).sum(0) == 0).float().mean())
    return sae, SAEReport(layer, d_sae, k, len(train), n_eval, ev, l0, dead)


def save_sae(sae: Any, report: SAEReport, folder: str | Path) -> Path:
    folder = Path(folder)
    sae.save_inference_model(folder)
    (folder / "steerlens_report.json").write_text(json.dumps(asdict(report), indent=1))
    return folder


def load_sae(folder: str | Path, device: str = "cpu") -> Any:
    """An SAE saved by ``save_sae`` (or any sae-lens folder)."""
    require_sae_lens("load_sae")
    from sae_lens import SAE

    return SAE.load_from_disk(str(folder), device=device)


def ensure_sae(
    model: HookedModel,
    layer: int,
    *,
    folder: str | Path | None = None,
    n_texts: int | None = None,
    progress_bar: bool = True,
    **train_kw: Any,
) -> tuple[Any, SAEReport]:
    """The SAE saved in ``folder`` (default ``default_sae_dir``), trained there first if
    missing (offline text: ``sae_text``)."""
    from steerlens.core.models import model_name

    require_sae_lens("the SAE backbone (ensure_sae)")
    folder = (
        Path(folder) if folder is not None else default_sae_dir(model_name(model) or "model", layer)
    )
    report_path = folder / "steerlens_report.json"
    if report_path.exists():
        return load_sae(folder), SAEReport(**json.loads(report_path.read_text()))
    texts = sae_text()
    if n_texts is not None:
        texts = texts[:n_texts]
    acts = token_activations(model, texts, layer, progress_bar=progress_bar)
    sae, report = train_sae(acts, layer=layer, **train_kw)
    save_sae(sae, report, folder)
    # the SAE as every later call loads it (the trained object can be sae-lens' training
    # class, whose encoding need not equal the saved SAE's): a run that trains it and one
    # that finds it cached give the same numbers
    return load_sae(folder), report
