"""The report's fidelity section: gbml against the authors' own code at a matched budget.

The A/B runs outside the pipeline (``benchmarks/fidelity/``: it needs the references' checkouts
and their frameworks) and commits its per-run results to ``reports/fidelity/results.csv``; this
section summarises them and links the study's own README, which holds the intervals and tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from gbml.stats import mean_std

HOW_TO_RUN = ("bash benchmarks/fidelity/setup.sh, then .venv-fidelity/bin/python benchmarks/fidelity/run.py "
              "--study <reptile|mamlpp|maml|fomaml|anil> [--reference <checkout of the study's repository>]")
# The studies: the algorithm and the authors' code gbml is matched against.
STUDIES = {"reptile": "Reptile against openai/supervised-reptile",
           "mamlpp": "MAML++ against AntreasAntoniou/HowToTrainYourMAMLPytorch",
           "maml": "MAML against learn2learn 0.2.0", "fomaml": "First-order MAML against learn2learn 0.2.0",
           "anil": "ANIL against learn2learn 0.2.0"}


def fidelity_section(fidelity_dir: Path, report_dir: Path) -> str:
    """Markdown: accuracy mean ± std over seeds per implementation and evaluation mode."""
    path = fidelity_dir / "results.csv"
    if not path.is_file():
        return ("\n## Fidelity against the authors' code\n\n"
                f"Not run: no `reports/fidelity/results.csv` ({HOW_TO_RUN}).\n")
    df = pd.read_csv(path)
    if "study" not in df:            # written before there was more than one study: Reptile's
        df.insert(0, "study", "reptile")
    modes = list(dict.fromkeys(df["mode"]))
    lines = ["", "## Fidelity against the authors' code", "",
             "Omniglot 5-way 1-shot at a matched CPU budget, both implementations on the same prepared arrays; "
             f"accuracy (%) mean ± std over seeds, from `{os.path.relpath(path, report_dir)}` "
             "(`benchmarks/fidelity/`). The settings, differences, their 95% intervals and tests: "
             f"[fidelity/README.md]({os.path.relpath(fidelity_dir, report_dir)}/README.md).",
             "", "| study | implementation | seeds | " + " | ".join(m.replace("_", "-") for m in modes) + " |",
             "|---|---|---|" + "---|" * len(modes)]
    for (study, side), rows in df.groupby(["study", "side"], sort=False):
        cells = []
        for mode in modes:
            mean, std = mean_std(rows.loc[rows["mode"] == mode, "accuracy"])
            cells.append(f"{mean:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}"))
        lines.append(f"| {STUDIES.get(study, study)} | {side} | {rows['seed'].nunique()} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])
