"""Progress bars: drawn in a terminal, and in Jupyter only where ipywidgets can draw them."""

from __future__ import annotations

import importlib.util

import pytest
import rich.console
import rich.progress

from steerlens.core import _progress


@pytest.mark.parametrize(
    ("jupyter", "widgets", "drawn"),
    [(False, False, True), (True, True, True), (True, False, False)],
    ids=["terminal", "jupyter-with-widgets", "jupyter-without-widgets"],
)
def test_a_bar_is_drawn_only_where_it_can_be(monkeypatch, jupyter, widgets, drawn):
    real = importlib.util.find_spec
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: jupyter)
    monkeypatch.setattr(
        _progress.importlib.util,
        "find_spec",
        lambda name, *a: (
            (real("json") if widgets else None) if name == "ipywidgets" else real(name)
        ),
    )
    tracked = []

    def track(items, **kw):
        tracked.append(kw["description"])
        yield from items

    monkeypatch.setattr(rich.progress, "track", track)
    items = list(_progress.progress(range(3), total=3, description="work", enabled=True))
    assert items == [0, 1, 2]
    assert tracked == (["work"] if drawn else [])
    assert list(_progress.progress(range(2), total=2, description="off", enabled=False)) == [0, 1]
    assert tracked == (["work"] if drawn else [])
