"""A rich progress bar that can be switched off (tests, nested loops)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _can_draw() -> bool:
    """rich draws a live bar in a terminal, and in Jupyter only through ipywidgets: without
    them each refresh would leave a static copy and a warning in the cell's output."""
    from rich.console import Console

    return not Console().is_jupyter or importlib.util.find_spec("ipywidgets") is not None


def progress(
    items: Iterable[T], *, total: int | None, description: str, enabled: bool
) -> Iterator[T]:
    if not enabled or not _can_draw():
        yield from items
        return
    from rich.progress import track

    yield from track(items, total=total, description=description, transient=True)
