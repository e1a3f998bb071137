"""The report's opening text, from the params and what MLflow recorded: what was run (grid, protocols,
wall time, hardware, commit), and the note on where the published numbers come from and what the rows mean."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from gbml.config import grid_datasets, section
from gbml.report.tables import base_algorithm_of
from gbml.tracking import git_commit


def header(params: dict, root: Path, per_run: pd.DataFrame, runs: pd.DataFrame, trackers: dict) -> str:
    start = runs["start_time"].min()
    end = runs["end_time"].max()
    iters = per_run.drop_duplicates("run_name").groupby("algorithm")["meta_iters"].first()
    unique = per_run.drop_duplicates("run_name")
    g = section(params, "grid")
    device = "CUDA: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    # Shown relative to the repository, so a committed report names no machine's paths.
    uri = next(iter(trackers.values())).uri.replace(f"sqlite:///{root.resolve()}/", "sqlite:///")
    experiments = ", ".join(f"{d}: [experiment {t.experiment_id}]({t.experiment_link()})" for d, t in trackers.items())
    return "\n".join([
        "# gbml results", "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `gbml report` from the MLflow store "
        f"`{uri}` ({experiments}: every run of the grid with its accuracies); browse with "
        "`mlflow ui --backend-store-uri sqlite:///mlruns.db`, where these links and the run links below open.", "",
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
