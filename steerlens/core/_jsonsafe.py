"""Strict JSON for results files: NaN and infinities become null (browsers' ``JSON.parse``
and jq reject the ``NaN`` that ``json.dumps`` writes by default), numpy scalars plain."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy / torch scalars
        try:
            obj = obj.item()
        except (ValueError, TypeError):
            return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(json_safe(obj), indent=1, allow_nan=False))


def update_json(path: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into the JSON object at ``path`` (created if missing), strictly."""
    path = Path(path)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(values)
    write_json(path, current)
    return current  # type: ignore[no-any-return]
