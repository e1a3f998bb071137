"""What the report reads from MLflow about the grid's runs: their records, learning curves and MAML++'s
learned inner rates (kept per seed), and the curves as CSV for ``dvc plots``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from gbml.errors import Fix, PipelineError
from gbml.io import load_checkpoint, write_text_atomic


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
