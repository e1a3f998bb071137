"""The report's compute section: what each published cell costs on a CPU, and which are GPU jobs.

``benchmarks/paper_cost.py`` measures seconds per meta-iteration and per test-time adaptation of
every cell of the paper profile and extrapolates to the full run; it writes
``reports/compute/cells.csv``, which this section summarises (the full table, with how it was
measured, is ``reports/compute/README.md``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

HOW_TO_RUN = "python benchmarks/paper_cost.py"
# A cell that needs more than a workstation's night on this CPU is a GPU job.
NIGHT_HOURS = 12.0


def compute_section(compute_dir: Path, report_dir: Path) -> str:
    """Markdown: per published cell its work (meta-iterations x meta-batch), the measured seconds
    per iteration and the extrapolated hours per seed on this CPU; the total."""
    path = compute_dir / "cells.csv"
    title = "\n## What the published cells cost on this CPU\n\n"
    if not path.is_file():
        return title + f"Not measured: no `reports/compute/cells.csv` ({HOW_TO_RUN}).\n"
    cells = pd.read_csv(path).drop_duplicates("cell")
    total = cells["hours_all_seeds"].sum()
    gpu = int((cells["hours_per_seed"] > NIGHT_HOURS).sum())
    lines = [title.rstrip("\n"), "",
             f"Measured by `benchmarks/paper_cost.py` on this machine (one thread; how, and adaptation costs: "
             f"[compute/README.md]({os.path.relpath(compute_dir, report_dir)}/README.md)). The paper grid is "
             f"{total:,.0f} CPU-hours ({total / 24:,.0f} days) of one thread; {gpu} of {len(cells)} cells need more "
             f"than {NIGHT_HOURS:g} hours per seed here: GPU jobs (`gbml profile paper`).", "",
             "| cell | meta-iterations x meta-batch | s / iteration | hours / seed | hours, all seeds |",
             "|---|---|---|---|---|"]
    for c in cells.itertuples():
        lines.append(f"| {c.cell} | {c.meta_iters:,} x {c.meta_batch} | {c.s_per_iter:.3f} | {c.hours_per_seed:,.1f} "
                     f"| {c.hours_all_seeds:,.1f} |")
    return "\n".join(lines + [""])
