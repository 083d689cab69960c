"""``steerlens.plots`` (``sl.plots``): every figure of the study's report, for research code.

Each function takes a tidy frame the library returns or writes — a sweep's ``cells.parquet``
or its summary tables, a ``history_effects`` result, a PPA table — and returns a
``plotly.graph_objects.Figure`` (nothing is shown or written; ``save_figure`` writes HTML and,
where Chrome is available, PNG). The functions live in ``steerlens.reporting.plots``.
"""

from steerlens.reporting.plots import *  # noqa: F403
from steerlens.reporting.plots import __all__ as __all__
