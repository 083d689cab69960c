"""``steerlens.explore`` (``sl.explore``): the live workbench of ``steerlens explore``.

``app(run=..., model=..., vectors=...)`` returns the Dash app; every page action is a method
of ``Explorer`` over plain data (``run_ladder``, ``point_generations``, ``condition_table``,
``user_card``, the exports), usable without a browser. Dash is the ``explore`` extra and is
imported only by ``app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steerlens.core._lazy import lazy_namespace

_NAMES = {
    "app": "steerlens.explore.app",
    "Explorer": "steerlens.explore.session",
    "ExploreState": "steerlens.explore.state",
    "Sources": "steerlens.explore.sources",
    "Ladder": "steerlens.explore.workbench",
    "run_ladder": "steerlens.explore.workbench",
    "prepare_vector": "steerlens.explore.workbench",
    "point_generations": "steerlens.explore.results",
    "result_figures": "steerlens.explore.results",
    "cell_state": "steerlens.explore.results",
    "condition_table": "steerlens.explore.users",
    "user_card": "steerlens.explore.users",
}
__getattr__, __dir__ = lazy_namespace(__name__, _NAMES, globals(), {})

if TYPE_CHECKING:
    from steerlens.explore.app import app
    from steerlens.explore.results import cell_state, point_generations, result_figures
    from steerlens.explore.session import Explorer
    from steerlens.explore.sources import Sources
    from steerlens.explore.state import ExploreState
    from steerlens.explore.users import condition_table, user_card
    from steerlens.explore.workbench import Ladder, prepare_vector, run_ladder

__all__ = [
    "ExploreState",
    "Explorer",
    "Ladder",
    "Sources",
    "app",
    "cell_state",
    "condition_table",
    "point_generations",
    "prepare_vector",
    "result_figures",
    "run_ladder",
    "user_card",
]
