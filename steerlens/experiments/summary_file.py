"""Reading a study's ``results/summary.json`` across versions (a small module: the report reads
summaries without importing the study's steps)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["LEGACY_KEYS", "read_summary"]

logger = logging.getLogger(__name__)

LEGACY_KEYS = {"best_alpha": "operating_alpha"}
"""Summary keys renamed since: old name -> new name (``read_summary`` reads both)."""


def read_summary(path: str | Path) -> dict[str, Any]:
    """A study's ``summary.json``, with keys an older version wrote under another name
    (``LEGACY_KEYS``) read under today's, and a deprecation note logged."""
    s: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    for old, new in LEGACY_KEYS.items():
        if old in s:
            logger.warning("%s: summary key %r is now %r (read as such)", path, old, new)
            s.setdefault(new, s.pop(old))
    return s
