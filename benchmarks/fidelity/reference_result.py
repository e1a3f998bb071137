"""The one result file every reference driver writes (``run.py`` reads it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_result(result: dict, out: Path, queries_per_task: int) -> None:
    """Add each mode's accuracy (per-task correct counts over ``queries_per_task``), write
    ``result`` to ``out`` atomically (a temporary file, then a rename) and print the summary."""
    result["accuracy"] = {m: float(np.sum(c)) / (len(c) * queries_per_task) for m, c in result["correct"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print(json.dumps({"accuracy": result["accuracy"], "train_seconds": round(result["train_seconds"], 1)}))
