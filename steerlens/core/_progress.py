"""A rich progress bar that can be switched off (tests, nested loops)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T], *, total: int | None, description: str, enabled: bool
) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, total=total, description=description, transient=True)
