"""Assemble reports/ (README.md, results.csv, metrics.json, figures/) for the current grid."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gbml.config import grid, section
from gbml.io import TEMP_MARK, remove_siblings, replace_dir, scratch_dir, write_json_atomic, write_text_atomic
from gbml.data.miniimagenet import HOW_TO_ADD, NO_SOURCE, configured_source
from gbml.report.compute import compute_section
from gbml.report.fidelity import fidelity_section
from gbml.report.header import header, published_note
from gbml.report.mlflow_runs import (curve_data, curve_plot_rows, fetch_runs, lslr_epochs, lslr_rates,
                                     recorded_run_ids, write_curve_plots)
from gbml.report.run_records import run_records, run_records_markdown
from gbml.report.reptile_studies import gradient_combinations_section, minibatch_overlap_section, taylor_section
from gbml.report.studies import feature_reuse_section, mamlpp_ablation_section
from gbml.report.figures import (accuracy_vs_paper, learning_curves, lslr_heatmaps, lslr_over_training,
                                 transduction_comparison)
from gbml.report.paper_tables import LEGEND, PAPER_TABLES, table_cells, table_markdown
from gbml.report.protocols import protocols_section
from gbml.report.tables import load_published, per_run_table, summary_markdown, summary_table
from gbml.tracking import tracker_for


def sine_section(sine_dir: Path, report_dir: Path) -> str:
    """The sine-wave case study's summary, from the ``gbml sine`` stage's metrics.json."""
    path = sine_dir / "metrics.json"
    if not path.is_file():
        return ("\n## Sine-wave regression\n\nNot run: no `reports/sine/metrics.json` "
                "(run `dvc repro` or `gbml sine`).\n")
    m = json.loads(path.read_text())
    steps = m["config"]["figure_steps"]
    rel = os.path.relpath(sine_dir, report_dir)
    lines = ["", "## Sine-wave regression (Finn et al. section 5.1; Nichol et al. Figure 1)", "",
             f"Query MSE on {m['num_test_tasks']} fixed test tasks after k SGD steps (lr {m['config']['eval_lr']}) "
             f"on K={m['config']['shots']} support points, mean ± 95% CI over tasks; every method starts from "
             "its meta-learned initialisation (random init: the untrained network).", "",
             "| method | meta-iterations | train s | " + " | ".join(f"k={k}" for k in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for a in m["algorithms"].values():
        cells = " | ".join(f"{a['mse_mean'][k]:.3f} ± {a['mse_ci95'][k]:.3f}" for k in steps)
        lines.append(f"| {a['label']} | {a['meta_iters']:,} | {a['train_seconds']:.0f} | {cells} |")
    lines += pretrained_sine_claim(m)
    lines += ["", f"![adaptation]({rel}/adaptation.png)", "", f"![MSE vs steps]({rel}/mse_vs_steps.png)", ""]
    return "\n".join(lines)


def pretrained_sine_claim(m: dict) -> list[str]:
    """Finn et al.'s claim about the pretrained baseline beside ours, when the study ran it."""
    algorithms = m["algorithms"]
    if "pretrain" not in algorithms or "maml" not in algorithms:
        return []
    last = m["steps"][-1]
    pre, maml, rand = (algorithms[n] for n in ("pretrain", "maml", "random_init"))
    fmt = lambda a, k: f"{a['mse_mean'][k]:.2f} ± {a['mse_ci95'][k]:.2f}"  # noqa: E731
    verdict = ("agrees" if pre["mse_mean"][1] > maml["mse_mean"][1] + maml["mse_ci95"][1] + pre["mse_ci95"][1]
               else "does not agree")
    return ["", "**Finn et al. (section 5.1, Figure 2):** the network pretrained on all tasks at once, fine-tuned "
            "on the K points, adapts poorly -- it learns the mean over tasks, near zero -- where MAML's "
            f"initialisation fits in one step. **Ours ({verdict}):** after 1 step pretrained {fmt(pre, 1)} vs MAML "
            f"{fmt(maml, 1)}; after {last} steps {fmt(pre, last)} vs {fmt(maml, last)} (random init {fmt(rand, last)}). "
            "Finn et al. tuned the pretrained network's step size; here every method takes the same SGD step."]


@dataclass
class Tracked:
    """What the report shows, fetched from MLflow for every dataset of the grid."""
    trackers: dict = field(default_factory=dict)
    runs: list[pd.DataFrame] = field(default_factory=list)
    per_runs: list[pd.DataFrame] = field(default_factory=list)
    curves: dict[str, dict] = field(default_factory=dict)          # dataset -> curve_data
    lslr: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    lslr_epochs: dict[str, dict] = field(default_factory=dict)
    models: dict[str, tuple[str, str, str]] = field(default_factory=dict)   # run id -> registered version


def collect(params: dict, root: Path, modes: list[str]) -> Tracked:
    specs, tracked = grid(params), Tracked()
    for dataset in sorted({s.dataset for s in specs}):
        tracker = tracked.trackers[dataset] = tracker_for(params, root, dataset)
        ids = recorded_run_ids(root, [s.name for s in specs if s.dataset == dataset])
        tracked.runs.append(fetch_runs(tracker, ids))
        per_run = per_run_table(tracked.runs[-1], modes)
        per_run["mlflow_link"] = per_run["mlflow_run_id"].map(tracker.ui_link)
        tracked.per_runs.append(per_run)
        tracked.curves[dataset] = curve_data(tracker, per_run)
        tracked.lslr.update(lslr_rates(tracker, per_run))
        tracked.lslr_epochs.update(lslr_epochs(tracker, per_run))
        tracked.models.update(tracker.registered_versions(per_run["mlflow_run_id"].unique()))
    return tracked


def write_figures(tracked: Tracked, summary: pd.DataFrame, modes: list[str], figures: Path) -> list[str]:
    """Every figure as a PNG under ``figures``; returns their markdown image lines."""
    figures.mkdir()
    paths = [learning_curves(curves, f"{dataset}: meta-training", figures / f"learning_curves_{dataset}.png")
             for dataset, curves in tracked.curves.items()]
    paths += [accuracy_vs_paper(summary, figures / "accuracy_vs_paper.png"),
              transduction_comparison(summary, modes, figures / "evaluation_modes.png"),
              lslr_heatmaps(tracked.lslr, figures / "mamlpp_lslr.png"),
              lslr_over_training(tracked.lslr_epochs, figures / "mamlpp_lslr_epochs.png")]
    return [f"![{p.stem.replace('_', ' ')}](figures/{p.name})" for p in paths]


def unavailable_datasets(params: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Datasets that cannot run in this profile: (reason, how to make them run) per dataset."""
    if configured_source(params)[0]:
        return {}, {}
    return {"miniimagenet": NO_SOURCE}, {"miniimagenet": f"To run it, {HOW_TO_ADD}."}


def write_paper_tables(params: dict, summary: pd.DataFrame, pub: pd.DataFrame, links: dict,
                       tables: Path) -> list[str]:
    """Each paper's table as CSV under ``tables``; returns their markdown."""
    tables.mkdir()
    unavailable, how_to = unavailable_datasets(params)
    markdown = []
    for table in PAPER_TABLES:
        cells = table_cells(table, summary, pub, unavailable)
        write_text_atomic(tables / f"{table.key}.csv", cells.to_csv(index=False))
        markdown.append(table_markdown(table, cells, links, how_to))
    return markdown


def build_report(params: dict, root: Path, out: Path, benchmarks: Path | None = None) -> Path:
    """Write the report into a staging directory, then move each part into ``out``: a failure
    anywhere leaves the previous report whole. ``benchmarks``: Snakemake's benchmark files
    (``logs/benchmarks``), shown per run when given."""
    modes = list(section(params, "evaluate")["modes"])
    tracked = collect(params, root, modes)
    per_run = pd.concat(tracked.per_runs)
    pub = load_published(root / section(params, "report")["published"])
    summary = summary_table(per_run, pub)
    links = per_run.drop_duplicates("mlflow_run_id").set_index("mlflow_run_id")["mlflow_link"]
    out.mkdir(parents=True, exist_ok=True)
    remove_siblings(out, TEMP_MARK)   # a killed build's staging
    with scratch_dir(out) as staging:
        paper_md = write_paper_tables(params, summary, pub, links.to_dict(), staging / "tables")
        figure_md = write_figures(tracked, summary, modes, staging / "figures")
        plot_rows: dict[str, list[dict]] = {}
        for curves, runs in zip(tracked.curves.values(), tracked.per_runs):
            for metric, rows in curve_plot_rows(curves, runs).items():
                plot_rows.setdefault(metric, []).extend(rows)
        write_curve_plots(plot_rows, staging / "plots")
        write_text_atomic(staging / "results.csv", summary.to_csv(index=False))
        write_text_atomic(staging / "runs.csv", per_run.to_csv(index=False))
        records = run_records(per_run, tracked.models, benchmarks, root)
        write_text_atomic(staging / "run_records.csv", records.to_csv(index=False))
        write_json_atomic(staging / "metrics.json", metrics_json(per_run, summary, root / "reports" / "sine"))
        write_text_atomic(staging / "README.md", "\n".join([
            header(params, root, per_run, pd.concat(tracked.runs), tracked.trackers),
            "## The papers' tables", "", LEGEND, "", *paper_md, protocols_section(params),
            "## All results", "", published_note(params), summary_markdown(summary, links),
            run_records_markdown(records, links, benchmarks),
            "## Figures", "", "\n\n".join(figure_md), "",
            sine_section(root / "reports" / "sine", out) if "sine" in params else "",
            feature_reuse_section(root / "reports" / "studies" / "feature_reuse", out, summary),
            gradient_combinations_section(root / "reports" / "studies" / "gradient_combinations", out),
            minibatch_overlap_section(root / "reports" / "studies" / "minibatch_overlap", out),
            taylor_section(root / "reports" / "studies" / "taylor_terms", out),
            mamlpp_ablation_section(root / "reports" / "studies" / "mamlpp_ablation", out, pub),
            fidelity_section(root / "reports" / "fidelity", out),
            compute_section(root / "reports" / "compute", out)]))
        publish(staging, out)
    return out / "README.md"


def publish(staging: Path, out: Path) -> None:
    """Move each staged file or directory onto its place in ``out`` (README.md last); a
    directory replaces its predecessor as fetch does (old one moved aside, deleted once in place)."""
    for item in sorted(staging.iterdir(), key=lambda p: p.name == "README.md"):
        if item.is_dir():
            replace_dir(item, out / item.name)
        else:
            item.replace(out / item.name)


def metrics_json(per_run: pd.DataFrame, summary: pd.DataFrame, sine_dir: Path | None = None) -> dict:
    """``dvc metrics show`` view: per cell the seed mean, per run the accuracy, by mode; and the
    sine study's final query MSE per method when it ran."""
    cells = {f"{r.algorithm}-{r.dataset}-{r.ways}w{r.shots}s": {} for r in summary.itertuples()}
    for r in summary.itertuples():
        cells[f"{r.algorithm}-{r.dataset}-{r.ways}w{r.shots}s"][r.mode] = round(r.accuracy_pct, 3)
    runs: dict[str, dict] = {}
    for r in per_run.itertuples():
        runs.setdefault(r.run_name, {})[r.mode] = round(r.accuracy_pct, 3)
    metrics = {"cells": cells, "runs": runs}
    sine = sine_dir / "metrics.json" if sine_dir else None
    if sine and sine.is_file():
        study = json.loads(sine.read_text())
        metrics["sine_mse_final"] = {name: round(a["mse_final"], 5) for name, a in study["algorithms"].items()}
    return metrics
