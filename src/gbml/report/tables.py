"""Result tables: per-run rows from MLflow, aggregated per cell and set beside the papers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gbml.stats import mean_std

# Which published protocol each evaluation mode corresponds to; NIL rows have no published
# counterpart at the settings our profiles run (Raghu et al. report NIL for 20-way Omniglot).
MODE_IS_TRANSDUCTIVE = {"transductive": True, "non_transductive": False}


def base_algorithm_of(run: pd.Series) -> str:
    """A run's algorithm class (a variant's ``variant_of``); runs tracked before variants existed
    carry no such tag and are their own base."""
    base = run.get("tags.base_algorithm")
    return base if isinstance(base, str) else run["tags.algorithm"]


def per_run_table(runs: pd.DataFrame, modes: list[str]) -> pd.DataFrame:
    """One row per (run, evaluation mode) from an ``mlflow.search_runs`` frame."""
    rows = []
    for _, r in runs.iterrows():
        for mode in modes:
            rows.append({
                "algorithm": r["tags.algorithm"], "dataset": r["tags.dataset"],
                "base_algorithm": base_algorithm_of(r),
                "ways": int(r["tags.ways"]), "shots": int(r["tags.shots"]), "seed": int(r["tags.seed"]),
                "mode": mode,
                "accuracy_pct": 100 * r[f"metrics.test_acc_{mode}"],
                "ci95_pct": 100 * r[f"metrics.test_ci95_{mode}"],
                "num_tasks": int(r["metrics.num_tasks"]),
                "meta_iters": int(float(r["params.algorithm.meta_iters"])),
                "train_seconds": r["metrics.train_seconds"], "eval_seconds": r["metrics.eval_seconds"],
                "train_peak_memory_mb": r.get("metrics.train_peak_memory_mb", math.nan),
                "eval_peak_memory_mb": r.get("metrics.eval_peak_memory_mb", math.nan),
                "mlflow_run_id": r["run_id"], "run_name": r["tags.gbml.run_name"],
            })
    return pd.DataFrame(rows).sort_values(["algorithm", "dataset", "ways", "shots", "mode", "seed"])


def load_published(path: Path) -> pd.DataFrame:
    pub = pd.read_csv(path, dtype={"variant": str}, keep_default_na=False)
    pub["transductive"] = pub["transductive"].astype(str).str.lower() == "true"
    return pub


def published_for(pub: pd.DataFrame, algorithm: str, dataset: str, ways: int, shots: int,
                  transductive: bool) -> pd.Series | None:
    """The paper's number for a cell: the algorithm's own paper first, plain variant only."""
    match = pub[(pub.algorithm == algorithm) & (pub.dataset == dataset) & (pub.ways == ways)
                & (pub.shots == shots) & (pub.transductive == transductive) & (pub.variant == "")]
    return None if match.empty else match.iloc[0]


def summary_table(per_run: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds and the mean per-seed 95% CI over tasks, beside the paper."""
    rows = []
    keys = ["algorithm", "dataset", "ways", "shots", "mode"]
    for key, g in per_run.groupby(keys, sort=True):
        algorithm, dataset, ways, shots, mode = key
        mean, std = mean_std(g["accuracy_pct"])
        paper = (published_for(pub, algorithm, dataset, ways, shots, MODE_IS_TRANSDUCTIVE[mode])
                 if mode in MODE_IS_TRANSDUCTIVE else None)
        paper_acc = float(paper["accuracy_pct"]) if paper is not None else math.nan
        rows.append({
            **dict(zip(keys, key)), "seeds": len(g), "accuracy_pct": mean, "std_over_seeds_pct": std,
            "mean_ci95_over_tasks_pct": g["ci95_pct"].mean(), "num_tasks": int(g["num_tasks"].iloc[0]),
            "meta_iters": int(g["meta_iters"].iloc[0]),
            "paper_accuracy_pct": paper_acc,
            "paper_plus_minus_pct": float(paper["plus_minus_pct"]) if paper is not None and paper["plus_minus_pct"] != "" else math.nan,
            "paper_source": paper["source"] if paper is not None else "",
            "difference_pct": mean - paper_acc,
            "mlflow_run_ids": " ".join(g["mlflow_run_id"]),
        })
    return pd.DataFrame(rows)


def fmt(x: float, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_markdown(summary: pd.DataFrame, links: pd.Series) -> str:
    """Every cell of the grid; ``links`` maps each MLflow run id to where ``mlflow ui`` shows it."""
    head = ("| algorithm | dataset | N-way K-shot | evaluation | ours: mean ± std over seeds (%) | "
            "95% CI over tasks (±, mean per seed) | paper (%) | paper ± | source | ours − paper | MLflow runs |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for _, r in summary.iterrows():
        runs = ", ".join(f"[`{rid[:8]}`]({links[rid]})" for rid in r["mlflow_run_ids"].split())
        lines.append(
            f"| {r['algorithm']} | {r['dataset']} | {r['ways']}-way {r['shots']}-shot | {r['mode'].replace('_', '-')} "
            f"| {fmt(r['accuracy_pct'])} ± {fmt(r['std_over_seeds_pct'])} ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''}) "
            f"| ± {fmt(r['mean_ci95_over_tasks_pct'])} ({r['num_tasks']} tasks) "
            f"| {fmt(r['paper_accuracy_pct'])} | {fmt(r['paper_plus_minus_pct'])} | {r['paper_source'] or 'no published number'} "
            f"| {fmt(r['difference_pct'], 2) if not math.isnan(r['difference_pct']) else '—'} "
            f"| {runs} |")
    return head + "\n".join(lines) + "\n"
