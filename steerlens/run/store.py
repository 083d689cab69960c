"""On-disk activation store: safetensors shards plus a JSON index, for runs too big for memory.

Layout of a store folder::

    index.json          {"format", "model_name", "hook", "layers", "pool", "d_model", "n", "shards"}
    shard-00000.safetensors  "acts": [m, layer, d_model] (pooled) or [positions, layer, d_model]
                             plus "offsets": [m + 1] (pool="none")
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["ActivationStore"]

_FORMAT = "steerlens.activations/1"


class ActivationStore:
    """Append-only writer and random-access reader of cached activations."""

    def __init__(self, root: str | Path, meta: dict[str, Any], shards: list[dict[str, Any]]):
        self.root = Path(root)
        self.meta = meta
        self.shards = shards
        self._starts = [0]
        for s in shards:
            self._starts.append(self._starts[-1] + int(s["n"]))

    # --- writing --------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, **meta: Any) -> ActivationStore:
        root = Path(root)
        if (root / "index.json").exists():
            raise FileExistsError(f"{root} already holds an activation store; pick a new folder")
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, {"format": _FORMAT, **meta}, [])
        store._write_index()
        return store

    def append(self, acts: list[Tensor]) -> None:
        """Write one shard: ``acts`` is a list of [layer, d] (pooled) or [layer, pos, d] tensors."""
        from safetensors.torch import save_file

        if not acts:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        if self.meta["pool"] == "none":
            flat = torch.cat([a.permute(1, 0, 2) for a in acts])  # [positions, layer, d]
            lengths = torch.tensor([0] + [a.shape[1] for a in acts]).cumsum(0)
            tensors = {"acts": flat.contiguous(), "offsets": lengths}
        else:
            tensors = {"acts": torch.stack(acts).contiguous()}
        save_file(tensors, str(self.root / name))
        self.shards.append({"file": name, "n": len(acts)})
        self._starts.append(self._starts[-1] + len(acts))
        self._write_index()

    def _write_index(self) -> None:
        index = {**self.meta, "n": len(self), "shards": self.shards}
        tmp = self.root / "index.json.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        tmp.replace(self.root / "index.json")

    # --- reading --------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> ActivationStore:
        root = Path(root)
        path = root / "index.json"
        if not path.exists():
            raise FileNotFoundError(f"no activation store at {root} (index.json missing)")
        index = json.loads(path.read_text())
        if index.get("format") != _FORMAT:
            raise ValueError(f"{path}: unknown format {index.get('format')!r}")
        shards = index.pop("shards")
        index.pop("n", None)
        return cls(root, index, shards)

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    def _shard(self, k: int) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.root / self.shards[k]["file"]))

    def iter_items(self) -> Iterator[Tensor]:
        """Each sequence's activations: [layer, d] (pooled) or [layer, pos, d]."""
        for k in range(len(self.shards)):
            data = self._shard(k)
            if self.meta["pool"] == "none":
                off = data["offsets"].tolist()
                for a, b in pairwise(off):
                    yield data["acts"][a:b].permute(1, 0, 2)
            else:
                yield from data["acts"]

    def __getitem__(self, i: int) -> Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a store of {len(self)}")
        i %= len(self)
        k = bisect_right(self._starts, i) - 1
        data = self._shard(k)
        r = i - self._starts[k]
        if self.meta["pool"] == "none":
            a, b = data["offsets"][r : r + 2].tolist()
            return data["acts"][a:b].permute(1, 0, 2)
        return data["acts"][r]

    def load(self) -> Float[Tensor, "n layer d_model"] | list[Tensor]:
        """Everything in memory: a stacked tensor (pooled) or a list (pool="none")."""
        items = list(self.iter_items())
        return items if self.meta["pool"] == "none" else torch.stack(items)

    def iter_batches(self, batch_size: int, layer: int) -> Iterator[Float[Tensor, "batch d_model"]]:
        """Row batches of one layer (positions flattened), e.g. to train an SAE."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} not in this store (it has {self.layers})")
        li = self.layers.index(layer)
        buf: list[Tensor] = []
        n = 0
        for item in self.iter_items():
            rows = item[li] if item.ndim == 3 else item[li : li + 1]
            buf.append(rows)
            n += rows.shape[0]
            while n >= batch_size:
                cat = torch.cat(buf)
                yield cat[:batch_size]
                buf, n = [cat[batch_size:]], cat.shape[0] - batch_size
        if n:
            yield torch.cat(buf)
