"""Start-up cost of steerlens against ``import torch, transformers``, in one run.

Each command runs in a fresh Python process (the operating system's file cache warm after a
first untimed round), interleaved, medians of ``--repeats`` rounds:

* ``import torch, transformers`` — the floor any steering tool on transformers pays;
* ``import steerlens`` — its layers, torch and TransformerLens load on first use;
* ``import steerlens`` and a first use (``steerlens.generate``: torch, transformers and
  TransformerLens loaded);
* ``steerlens --help``, ``steerlens generate --help`` and a mistyped command.

Prints ratios (>1: steerlens is faster than the floor) and the seconds of the CLI calls.
Usage: ``python benchmarks/startup.py [--repeats 7]``; ``run_all.py --parts startup`` runs it too.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
CLI = shutil.which("steerlens", path=str(Path(PY).parent)) or "steerlens"
COMMANDS: dict[str, list[str]] = {
    "torch+transformers": [PY, "-c", "import torch, transformers"],
    "import steerlens": [PY, "-c", "import steerlens"],
    "steerlens first use": [PY, "-c", "import steerlens; steerlens.generate"],
    "steerlens --help": [CLI, "--help"],
    "steerlens generate --help": [CLI, "generate", "--help"],
    "steerlens (typo)": [CLI, "gnerate"],
}


def _seconds(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def startup_part(
    repeats: int = 7,
) -> tuple[dict[str, float], list[tuple[str, float, float | None]]]:
    """Median seconds of each command and the bench rows (label, ratio, target ratio)."""
    for cmd in COMMANDS.values():  # warm the file cache
        _seconds(cmd)
    runs: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(repeats):
        for k, cmd in COMMANDS.items():
            runs[k].append(_seconds(cmd))
    med = {k: statistics.median(v) for k, v in runs.items()}
    floor = med["torch+transformers"]
    rows: list[tuple[str, float, float | None]] = [
        # the bound: import steerlens <= 1.3 x import torch, transformers
        (
            "import steerlens vs import torch, transformers",
            floor / med["import steerlens"],
            1 / 1.3,
        ),
        (
            "import steerlens + first use (TransformerLens loaded) vs torch, transformers",
            floor / med["steerlens first use"],
            None,
        ),
    ]
    for k in ("steerlens --help", "steerlens generate --help", "steerlens (typo)"):
        # the bound is 1 s of wall time; the ratio puts it beside the floor of the same run
        rows.append(
            (f"{k} ({med[k]:.2f} s; bound 1 s) vs torch, transformers", floor / med[k], None)
        )
    return med, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    med, rows = startup_part(args.repeats)
    for k, v in med.items():
        print(f"{k:32s} {v:6.2f} s")
    for label, ratio, target in rows:
        goal = "" if target is None else f"  (target >= {target:.2f})"
        print(f"{ratio:6.2f}x  {label}{goal}")


if __name__ == "__main__":
    main()
