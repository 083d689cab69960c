"""Where a study's numbers came from: the machine its times were taken on and the code it ran
(``summary["machine"]``, ``summary["code"]``)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from steerlens.core._version import __version__

__all__ = ["code_provenance", "machine"]


def machine() -> str:
    """The machine the timings were taken on, in words."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}"


def code_provenance() -> dict[str, Any]:
    """The code a run used: the steerlens version and, where the package sits in a git work
    tree, its commit (``dirty`` where tracked files differ from it)."""
    import subprocess

    out: dict[str, Any] = {"steerlens": __version__, "commit": None, "dirty": None}
    root = Path(__file__).resolve().parents[2]
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        if head.returncode == 0:
            status = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True
            )
            out["commit"] = head.stdout.decode().strip()
            out["dirty"] = bool(status.stdout.strip())
    except OSError:  # no git on this machine: the version alone
        pass
    return out
