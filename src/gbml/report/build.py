"""Assemble reports/ (README.md, results.csv, metrics.json, figures/) for the current grid."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gbml.config import grid, grid_datasets, section
from gbml.errors import Fix, PipelineError
from gbml.io import (TEMP_MARK, load_checkpoint, remove_siblings, replace_dir, scratch_dir, write_json_atomic,
                     write_text_atomic)
from gbml.data.miniimagenet import HOW_TO_ADD, NO_SOURCE, configured_source
from gbml.report.compute import compute_section
from gbml.report.fidelity import fidelity_section
from gbml.report.studies import (feature_reuse_section, gradient_combinations_section, mamlpp_ablation_section,
                                 minibatch_overlap_section, taylor_section)
from gbml.report.figures import (accuracy_vs_paper, learning_curves, lslr_heatmaps, lslr_over_training,
                                 transduction_comparison)
from gbml.report.paper_tables import LEGEND, PAPER_TABLES, table_cells, table_markdown
from gbml.report.protocols import protocols_section
from gbml.report.tables import base_algorithm_of, load_published, per_run_table, summary_markdown, summary_table
from gbml.tracking import git_commit, tracker_for


def recorded_run_ids(root: Path, names: list[str]) -> dict[str, str]:
    """The MLflow run id each evaluation of the grid recorded (a pointer; metrics come from MLflow)."""
    ids, missing = {}, []
    for name in names:
        path = root / "evals" / name / "metrics.json"
        if not path.is_file():
            missing.append(name)
            continue
        ids[name] = json.loads(path.read_text())["mlflow_run_id"]
    if missing:
        raise PipelineError(f"no evaluation for {', '.join(missing)}: evaluate them first", fix=Fix("evaluate"))
    return ids


def fetch_runs(tracker, ids: dict[str, str]) -> pd.DataFrame:
    runs = tracker.runs(list(ids.values()))
    absent = sorted(set(ids.values()) - set(runs["run_id"]) if not runs.empty else set(ids.values()))
    if absent:
        names = [n for n, r in ids.items() if r in absent]
        raise PipelineError(f"MLflow store {tracker.uri} lacks the runs of {', '.join(names)}; "
                            "train them again to record them", fix=Fix("train", force=True))
    return runs


def curve_label(r) -> str:
    """A learning-curve series: one algorithm and setting, its seeds as band."""
    return f"{r['algorithm']} {r['ways']}w{r['shots']}s"


def curve_data(tracker, per_run: pd.DataFrame) -> dict:
    curves: dict[str, dict] = {}
    for _, r in per_run.drop_duplicates("mlflow_run_id").iterrows():
        label = curve_label(r)
        for metric in ("train_acc", "val_acc"):
            curves.setdefault(label, {})[f"{metric}/{r['seed']}"] = tracker.metric_history(r["mlflow_run_id"], metric)
    return curves


def header(params: dict, root: Path, per_run: pd.DataFrame, runs: pd.DataFrame, trackers: dict) -> str:
    start = runs["start_time"].min()
    end = runs["end_time"].max()
    iters = per_run.drop_duplicates("run_name").groupby("algorithm")["meta_iters"].first()
    unique = per_run.drop_duplicates("run_name")
    g = section(params, "grid")
    device = "CUDA: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    # Shown relative to the repository, so a committed report names no machine's paths.
    uri = next(iter(trackers.values())).uri.replace(f"sqlite:///{root.resolve()}/", "sqlite:///")
    experiments = ", ".join(f"{d} = experiment {t.experiment_id}" for d, t in trackers.items())
    return "\n".join([
        "# gbml results", "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `gbml report` from the MLflow store "
        f"`{uri}` ({experiments}); browse with `mlflow ui --backend-store-uri sqlite:///mlruns.db`, "
        "where the run links below open.", "",
        "## What was run", "",
        f"- profile: **{params.get('profile', 'unnamed')}**; grid: algorithms {g['algorithms']}, "
        + "; ".join(f"{d} ways {g[d]['ways']} shots {g[d]['shots']}" for d in grid_datasets(params))
        + f"; seeds {g['seeds']}",
        "- meta-iterations: " + ", ".join(f"{a} {n:,}" for a, n in iters.items()),
        f"- evaluation: {evaluation_protocol(params)}",
        f"- test-time adaptation: {test_time_adaptation(runs)}",
        f"- wall time: training {unique['train_seconds'].sum() / 60:.1f} min + evaluation "
        f"{unique['eval_seconds'].sum() / 60:.1f} min over {len(unique)} runs; first training start to last "
        f"evaluation end {(end - start).total_seconds() / 60:.1f} min",
        f"- hardware: {platform.machine()}, {os.cpu_count()} CPU cores, {device}; torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"- git commit: `{git_commit(root)}`", "",
    ])


def test_time_adaptation(runs: pd.DataFrame) -> str:
    """How each algorithm adapts at test time, from the parameters MLflow recorded."""
    parts = []
    for algorithm, r in runs.drop_duplicates("tags.algorithm").set_index("tags.algorithm").sort_index().iterrows():
        prefix = "params.algorithm."
        p = {k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)}.get
        if base_algorithm_of(r) == "reptile":
            parts.append(f"reptile {p('eval_inner_iters')} {p('inner_optimizer')} iterations of batch "
                         f"{p('eval_inner_batch')} (lr {p('inner_lr')}, {p('eval_adam_state')} optimiser state)")
        elif base_algorithm_of(r) == "pretrain":
            what = "the whole network" if p("finetune") == "all" else "the head"
            parts.append(f"{algorithm} {p('eval_inner_steps')} SGD steps on {what} from a zero head, "
                         f"lr {p('eval_inner_lr')}")
        else:
            lr = "learned per-step rates (LSLR)" if p("lslr") == "True" else f"lr {p('inner_lr')}"
            parts.append(f"{algorithm} {p('eval_inner_steps')} SGD steps, {lr}")
    return "; ".join(parts)


def evaluation_protocol(params: dict) -> str:
    ev = section(params, "evaluate")
    tasks = f"{ev['num_tasks']:,}" + "".join(f", {a} {n:,}" for a, n in (ev.get("num_tasks_per_algorithm") or {}).items())
    queries = f"{ev['queries']}" + "".join(f", {a} {n or 'K'}" for a, n in (ev.get("queries_per_algorithm") or {}).items())
    return (f"{tasks} fixed {ev['split']} tasks per run (seed {ev['seed']}), {queries} "
            f"quer{'y' if queries == '1' else 'ies'} per class, modes {', '.join(ev['modes'])}; "
            "per-task accuracies are kept (`evals/<run>/per_task.csv`, MLflow artifact `evaluation/`)")


def published_note(params: dict) -> str:
    return ("Published numbers come from `src/gbml/reference/published_results.csv` (source column: "
            "`nichol2018_table1` = Nichol, Achiam, Schulman 2018, *On First-Order Meta-Learning Algorithms*, "
            "Table 1, whose MAML rows quote Finn et al. 2017; `antoniou2019`; `raghu2020_table2`). Reptile's "
            "published ± is a std over 3 seeds, MAML's a 95% CI over tasks. Ours: mean ± std over our seeds, "
            "and separately the 95% CI over test tasks. The transductive figure depends on the query batch "
            f"({section(params, 'evaluate')['queries']} query per class here). Paper runs used 60k-100k "
            "meta-iterations on a GPU; a short CPU profile is expected to fall short of them."
            + protocol_notes(params) + "\n")


def protocol_notes(params: dict) -> str:
    """What the rows mean where an algorithm's protocol differs from plain 'adapt, then score'."""
    algorithms = section(params, "grid")["algorithms"]
    notes = []
    if "mamlpp" in algorithms:
        n = params.get("mamlpp", {}).get("ensemble_top_n", 0)
        notes.append(f"mamlpp rows score the ensemble of the {n} checkpoints with the best validation accuracy "
                     "(logits averaged; MAML++'s protocol)" if n else "mamlpp rows score the final checkpoint")
    if "pretrain" in algorithms:
        notes.append("pretrain rows are the joint-training baseline: one network trained to classify all "
                     "meta-training classes at once (no inner loop, no episodes), fine-tuned on each test task's "
                     "support set; nothing meta-learned")
    if "nil" in section(params, "evaluate")["modes"]:
        notes.append("nil rows: Raghu et al.'s no-inner-loop classifier (cosine similarity of the meta-learned "
                     "body's features to the support set's, no adaptation, no head)")
    return "".join(f" {note[0].upper()}{note[1:]}." for note in notes)


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


def best_validated_checkpoint(tracker, run_id: str, dst: Path) -> tuple[Path, str]:
    """The run's checkpoint with the best validation accuracy (``ensemble/members.json``'s first
    member: MAML++ keeps its top-n epochs) and a label saying which; the final checkpoint when
    the run kept none."""
    kept = {Path(a.path).name for a in tracker.client.list_artifacts(run_id, "ensemble")}   # none: ensemble_top_n 0
    members = (json.loads(tracker.download_artifact(run_id, "ensemble/members.json", dst).read_text())
               if "members.json" in kept else [])
    if members:
        best = members[0]
        return (tracker.download_artifact(run_id, f"ensemble/{best['file']}", dst),
                f"best validation: step {best['step']}, {100 * best['val_acc']:.1f}%")
    return tracker.download_artifact(run_id, "checkpoint.pt", dst), "final checkpoint"


def lslr_rates(tracker, per_run: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """MAML++'s learned inner learning rates, per setting and seed (Antoniou et al. show them per
    layer and step; seeds disagree more than a mean shows), read from each run's best-validated
    checkpoint in MLflow (``inner_lrs``; none when LSLR is off)."""
    found: dict[str, dict[str, np.ndarray]] = {}
    runs = per_run[per_run.base_algorithm == "mamlpp"].drop_duplicates("mlflow_run_id").sort_values(["algorithm", "seed"])
    with tempfile.TemporaryDirectory() as tmp:
        for _, r in runs.iterrows():
            path, which = best_validated_checkpoint(tracker, r["mlflow_run_id"], Path(tmp) / r["mlflow_run_id"])
            rates = load_checkpoint(path).get("inner_lrs", {})
            if rates:
                setting = f"{r['algorithm']}, {r['dataset']} {r['ways']}-way {r['shots']}-shot, seed {r['seed']}\n({which})"
                found[setting] = {n: v.double().numpy() for n, v in rates.items()}
    return found


def lslr_epochs(tracker, per_run: pd.DataFrame) -> dict[str, dict[int, dict[str, list[tuple[int, float]]]]]:
    """MAML++'s learned inner rates over training, per setting and seed: the ``lslr/<tensor>/step<k>``
    histories its training logs once per epoch (``MAMLPlusPlus.curve_metrics``)."""
    found: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    runs = per_run[per_run.base_algorithm == "mamlpp"].drop_duplicates("mlflow_run_id").sort_values(["algorithm", "seed"])
    for _, r in runs.iterrows():
        keys = tracker.metric_keys(r["mlflow_run_id"], "lslr/")
        if keys:
            setting = f"{r['algorithm']}, {r['dataset']} {r['ways']}-way {r['shots']}-shot"
            found.setdefault(setting, {})[int(r["seed"])] = {
                k.removeprefix("lslr/"): tracker.metric_history(r["mlflow_run_id"], k) for k in keys}
    return found


def curve_plot_rows(curves: dict, per_run: pd.DataFrame) -> dict[str, list[dict]]:
    """Long-format rows (run, step, accuracy %) per metric, for ``dvc plots show``."""
    rows: dict[str, list[dict]] = {"train_acc": [], "val_acc": []}
    for _, r in per_run.drop_duplicates("mlflow_run_id").iterrows():
        histories = curves[curve_label(r)]
        for metric in rows:
            rows[metric] += [{"run": r["run_name"], "step": step, f"{metric}_pct": 100 * value}
                             for step, value in histories[f"{metric}/{r['seed']}"]]
    return rows


def write_curve_plots(rows: dict[str, list[dict]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for metric, name in (("val_acc", "held_out_accuracy.csv"), ("train_acc", "train_accuracy.csv")):
        frame = pd.DataFrame(rows[metric], columns=["run", "step", f"{metric}_pct"])
        write_text_atomic(out / name, frame.to_csv(index=False))


@dataclass
class Tracked:
    """What the report shows, fetched from MLflow for every dataset of the grid."""
    trackers: dict = field(default_factory=dict)
    runs: list[pd.DataFrame] = field(default_factory=list)
    per_runs: list[pd.DataFrame] = field(default_factory=list)
    curves: dict[str, dict] = field(default_factory=dict)          # dataset -> curve_data
    lslr: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    lslr_epochs: dict[str, dict] = field(default_factory=dict)


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


def build_report(params: dict, root: Path, out: Path) -> Path:
    """Write the report into a staging directory, then move each part into ``out``: a failure
    anywhere leaves the previous report whole."""
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
        write_json_atomic(staging / "metrics.json", metrics_json(per_run, summary, root / "reports" / "sine"))
        write_text_atomic(staging / "README.md", "\n".join([
            header(params, root, per_run, pd.concat(tracked.runs), tracked.trackers),
            "## The papers' tables", "", LEGEND, "", *paper_md, protocols_section(params),
            "## All results", "", published_note(params), summary_markdown(summary, links),
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
