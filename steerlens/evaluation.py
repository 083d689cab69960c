"""``steerlens.evaluation``: the name the public API has used for the metrics layer.

Everything here is ``steerlens.metrics``; the submodules moved with it
(``steerlens.metrics.mmlu``, ``.preference``, ``.toxicity``, ``.stats``, ``.token_truth``;
the sweep summary tables are ``steerlens.metrics.summaries``).
"""

from steerlens.metrics import *  # noqa: F403
from steerlens.metrics import __all__ as __all__
from steerlens.metrics import summaries as tables

__all__ = [*__all__, "tables"]
