"""The report's per-run record: what each training and evaluation run cost (gbml's own wall time
and peak memory from MLflow; Snakemake's ``benchmark:`` files -- wall time and max RSS of the
whole job -- when the pipeline ran under Snakemake) and its registered checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gbml.report.tables import fmt

STEPS = ("train", "evaluate")


OUTPUTS = {"train": "runs/{}/run.json", "evaluate": "evals/{}/metrics.json"}   # what each job writes last


def snakemake_benchmark(directory: Path | None, step: str, run_name: str, root: Path) -> dict[str, float]:
    """Wall seconds and max RSS (MB) of one job from ``<directory>/<step>/<run>.tsv`` (Snakemake's
    benchmark file: a header, then one row per repeat); empty where there is none, or where it is
    older than the job's output (written by DVC since: the file measured an earlier run)."""
    path = directory / step / f"{run_name}.tsv" if directory else None
    output = root / OUTPUTS[step].format(run_name)
    if not path or not path.is_file() or not output.is_file() or path.stat().st_mtime < output.stat().st_mtime:
        return {}
    table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
    return {"s": float(table["s"].iloc[-1]), "max_rss": float(table["max_rss"].iloc[-1])}


def run_records(per_run: pd.DataFrame, models: dict[str, tuple[str, str, str]], benchmarks: Path | None,
                root: Path) -> pd.DataFrame:
    """One row per run: gbml's and Snakemake's wall time and memory per step, and the model version
    (``models``: run id -> (name, version, link))."""
    rows = []
    for _, r in per_run.drop_duplicates("mlflow_run_id").iterrows():
        row = {"run_name": r["run_name"], "mlflow_run_id": r["mlflow_run_id"],
               "train_seconds": r["train_seconds"], "train_peak_memory_mb": r["train_peak_memory_mb"],
               "eval_seconds": r["eval_seconds"], "eval_peak_memory_mb": r["eval_peak_memory_mb"]}
        for step in STEPS:
            bench = snakemake_benchmark(benchmarks, step, r["run_name"], root)
            row[f"snakemake_{step}_s"] = bench.get("s", math.nan)
            row[f"snakemake_{step}_max_rss_mb"] = bench.get("max_rss", math.nan)
        name, version, link = models.get(r["mlflow_run_id"], ("", "", ""))
        row.update(model=name, model_version=version, model_link=link)
        rows.append(row)
    return pd.DataFrame(rows)


def run_records_markdown(records: pd.DataFrame, links: pd.Series, benchmarks: Path | None) -> str:
    snakemake = benchmarks is not None and records[[f"snakemake_{s}_s" for s in STEPS]].notna().any().any()
    head = ["run", "train s", "train peak MB", "evaluate s", "evaluate peak MB"]
    if snakemake:
        head += ["Snakemake train s", "train max RSS MB", "Snakemake evaluate s", "evaluate max RSS MB"]
    head.append("registered checkpoint")
    lines = ["## Runs: cost and checkpoints", "",
             "Each run's wall time and peak memory as gbml measured them (training: the meta-training loop; "
             "evaluation: scoring every test task; peak: the CUDA allocator's on a GPU, the process's resident "
             "set on a CPU)" + (", and Snakemake's `benchmark:` files for the same jobs (the whole process: "
                                "interpreter start, data loading, logging)" if snakemake else
                                ". Under Snakemake the table adds each job's `benchmark:` record (wall time, "
                                "max RSS; `logs/benchmarks/`)") +
             ". Every finished run's final checkpoint is a version of a registered model: "
             "`gbml.model_registry.load_model(\"models:/<model>/<version>\")` (or `@best`, `@seed<k>`) returns it ready to adapt.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in records.iterrows():
        cells = [f"[{r['run_name']}]({links[r['mlflow_run_id']]})", fmt(r["train_seconds"], 0),
                 fmt(r["train_peak_memory_mb"], 0), fmt(r["eval_seconds"], 0), fmt(r["eval_peak_memory_mb"], 0)]
        if snakemake:
            cells += [fmt(r[f"snakemake_{s}_{k}"], 0) for s in STEPS for k in ("s", "max_rss_mb")]
        cells.append(f"[`{r['model']}` v{r['model_version']}]({r['model_link']})" if r["model"] else "not registered")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
