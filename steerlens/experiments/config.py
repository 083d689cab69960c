"""The run section every job shares: seed, device and batch size, set once and read by each
step (instead of a copy of the three fields in every step's config)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RunSection"]


@dataclass
class RunSection:
    seed: int = 0
    device: str | None = None  # "cpu", "cuda", "cuda:1", ...; None: CUDA when available
    batch_size: int = 16  # rows a batch; prefill work also packs by a token budget

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device {self.device!r}: {e}") from None
