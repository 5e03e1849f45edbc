"""Compare two run folders: do they hold the same metrics and the same clustering history?

    python tools/compare_runs.py RUN_A RUN_B

A refactoring that must not change behaviour is checked by running the smoke experiment at the
old and the new commit (``python -m gur_lightning.train +experiment=smoke
hydra.run.dir=RUN logger=csv``) and comparing the two folders: ``metrics.json`` and
``clustering_history.json`` must be equal once timings (``seconds``, the kNN engine name) are
left out. Exit status 0 when both are equal, 1 otherwise (the differing keys are printed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: Keys that record how long or on which engine something ran, not what it computed.
IGNORED = {"seconds", "knn_backend"}


def strip(obj: Any) -> Any:
    """``obj`` without the timing keys, at any depth."""
    if isinstance(obj, dict):
        return {
            k: strip(v) for k, v in obj.items() if k not in IGNORED and not k.endswith("seconds")
        }
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def main(argv: list[str]) -> int:
    """Compare the two folders named in ``argv``; print one line per file."""
    a, b = Path(argv[0]), Path(argv[1])
    same_all = True
    for name in ("metrics.json", "clustering_history.json"):
        x = strip(json.loads((a / name).read_text()))
        y = strip(json.loads((b / name).read_text()))
        same = x == y
        same_all &= same
        sys.stdout.write(f"{name} {'identical' if same else 'DIFFERENT'}\n")
        if not same and isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                if x.get(key) != y.get(key):
                    sys.stdout.write(f"  {key}: {x.get(key)!r} | {y.get(key)!r}\n")
    return 0 if same_all else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
