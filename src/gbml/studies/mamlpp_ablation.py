"""MAML's instability and MAML++'s fixes, switch by switch (Antoniou, Edwards, Storkey 2019,
Figure 1 and the ablation rows of Table 1).

Each arm is a params section -- an algorithm or a ``variant_of`` one, in practice MAML++ with
some of its switches on (all off is MAML, as the authors' code runs it) -- trained from every
seed through the pipeline's own training loop (``gbml.train.train_run``) and scored on the same
test tasks (``gbml.evaluate.evaluate_run``, transductive: MAML++'s protocol). A unit is one arm
and one seed; its run directory and test scores land in ``studies/mamlpp_ablation/<arm>-seed<s>/``.

Training here never stops on a non-finite loss: a diverging meta-step is undone and counted
(``training.nonfinite: skip``), since divergence is what the study looks for. A run is called
unstable when it skipped a step or its training loss rose ``rise`` nats above its running
minimum; the summary counts unstable seeds per arm and sets every arm's test accuracy against
the baseline's, paired task by task.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from gbml.config import RunSpec, resolved_run_config
from gbml.errors import ConfigError, Fix, PipelineError
from gbml.io import staged_dir, write_json_atomic, write_text_atomic
from gbml.stats import mean_ci95, mean_std
from gbml.studies.config import MamlppAblationConfig
from gbml.studies.first_order import not_run_summary
from gbml.studies.units import grid_units, summary_outputs_from, unit_names_from

UNIT_FLAGS = ("arm", "seed")   # one measured unit: an arm trained from one seed
OUTPUTS = ("curves.csv", "final.csv", "instability.png", "ablation.png", "metrics.json")
MODE = "transductive"


def unit_dir(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def unit_config(params: dict, cfg: MamlppAblationConfig, spec: RunSpec) -> dict:
    """The arm's resolved run config, with the study's curve resolution, evaluation and policy."""
    run_cfg = copy.deepcopy(resolved_run_config(params, spec))
    run_cfg["training"].update(log_every=cfg.log_every, nonfinite="skip")
    run_cfg["evaluate"].update(num_tasks=cfg.eval_tasks, seed=cfg.eval_seed, modes=[MODE])
    return run_cfg


def measure_unit(params: dict, cfg: MamlppAblationConfig, unit: dict, workspace, measured: Path) -> Path:
    """Train one arm from one seed and score it: ``measured/<arm>-seed<seed>/`` holds the run
    directory (``run/``: history.json, checkpoints) and its test scores (``test/per_task.csv``),
    whole or not at all."""
    from gbml.evaluate import evaluate_run
    from gbml.train import train_run

    arm, seed = unit["arm"], int(unit["seed"])
    if arm not in cfg.arms:
        raise ConfigError(f"studies.mamlpp_ablation.arms {list(cfg.arms)} does not include {arm!r}")
    if seed not in cfg.seeds:
        raise ConfigError(f"studies.mamlpp_ablation.seeds {list(cfg.seeds)} does not include {seed}")
    spec = RunSpec(arm, cfg.dataset, cfg.ways, cfg.shots, seed)
    run_cfg = unit_config(params, cfg, spec)
    prepared = workspace.prepared(cfg.dataset)
    out = Path(measured) / unit_dir(arm, seed)
    with staged_dir(out) as tmp:
        train_run(spec, run_cfg, prepared, tmp / "run")
        evaluate_run(spec, run_cfg, prepared, tmp / "run", tmp / "test")
    return out


def units(cfg: MamlppAblationConfig) -> list[dict]:
    return grid_units(arm=cfg.arms, seed=cfg.seeds)


unit_names = unit_names_from(units, unit_dir)
summary_outputs = summary_outputs_from(OUTPUTS)


READS = ("run/history.json", "run/run.json", "test/per_task.csv")


def measured_files(params: dict, cfg: MamlppAblationConfig) -> list[str]:
    """The files ``summarise`` reads, under the measurements' directory."""
    return [f"{unit_dir(**unit)}/{name}" for unit in units(cfg) for name in READS]


def max_rise(losses: np.ndarray) -> float:
    """How far the training loss ever climbed above its running minimum (0 for a curve that
    never rises; NaN points are ignored)."""
    finite = losses[np.isfinite(losses)]
    return float(np.max(finite - np.minimum.accumulate(finite))) if finite.size else float("nan")


def run_summary(history: list[dict], run: dict, test: np.ndarray, cfg: MamlppAblationConfig) -> dict:
    losses = np.array([row["train_loss"] for row in history if "train_loss" in row], dtype=float)
    rise, skipped = max_rise(losses), int(run.get("nonfinite_skipped", 0))
    tail = losses[-max(1, len(losses) // 10):]
    val = [row["val_acc"] for row in history if "val_acc" in row]
    return {"test_accuracy": float(np.mean(test)), "max_rise": rise, "nonfinite_skipped": skipped,
            "unstable": bool(skipped or not rise <= cfg.rise), "final_train_loss": float(np.nanmean(tail)),
            "best_val_accuracy": float(max(val)) if val else float("nan")}


def summary(runs: dict[tuple[str, int], dict], tests: dict[tuple[str, int], np.ndarray],
            cfg: MamlppAblationConfig) -> dict:
    """Per arm: test accuracy (mean and 95% interval over seeds x tasks, std over the seeds'
    means), unstable seeds, the spread of the final training loss; every other arm against the
    baseline, paired by seed and task."""
    arms = {}
    for arm in cfg.arms:
        mine = [runs[(arm, s)] for s in cfg.seeds]
        acc, half = mean_ci95(np.concatenate([tests[(arm, s)] for s in cfg.seeds]))
        arms[arm] = {"accuracy": acc, "ci95": half, "std_over_seeds": mean_std([r["test_accuracy"] for r in mine])[1],
                     "unstable_seeds": sum(r["unstable"] for r in mine), "seeds": len(mine),
                     "final_train_loss_std": mean_std([r["final_train_loss"] for r in mine])[1]}
    differences = {f"{arm}-vs-{cfg.baseline}": dict(zip(("change", "ci95"), mean_ci95(np.concatenate(
        [tests[(arm, s)] - tests[(cfg.baseline, s)] for s in cfg.seeds])))) for arm in cfg.arms if arm != cfg.baseline}
    return {"arms": arms, "differences": differences,
            "runs": {unit_dir(a, s): r for (a, s), r in runs.items()}}


def load_unit(measured: Path, arm: str, seed: int) -> tuple[list[dict], dict, np.ndarray]:
    base = Path(measured) / unit_dir(arm, seed)
    history = json.loads((base / "run" / "history.json").read_text())
    run = json.loads((base / "run" / "run.json").read_text())
    per_task = pd.read_csv(base / "test" / "per_task.csv")
    return history, run, per_task[per_task["mode"] == MODE].sort_values("task")["accuracy"].to_numpy()


def summarise(params: dict, cfg: MamlppAblationConfig, measured: Path, out: Path) -> dict:
    """Gather every unit into ``out``: curves.csv (each run's training loss and validation
    accuracy), final.csv (per run), instability.png, ablation.png and metrics.json; with no
    seeds in this profile, only metrics.json saying the study was not run."""
    out.mkdir(parents=True, exist_ok=True)
    if (skipped := not_run_summary(params, cfg, out, OUTPUTS)) is not None:
        return skipped
    missing = [unit_dir(**u) for u in units(cfg) if not all((Path(measured) / unit_dir(**u) / n).is_file() for n in READS)]
    if missing:
        raise PipelineError(f"MAML++ ablation: no finished run for {', '.join(missing)} in {measured}; train them "
                            "first", fix=Fix("study", "mamlpp_ablation"))
    histories, runs, tests = {}, {}, {}
    for u in units(cfg):
        key = (u["arm"], u["seed"])
        histories[key], run, tests[key] = load_unit(measured, **u)
        runs[key] = run_summary(histories[key], run, tests[key], cfg)
    metrics = {"config": dataclasses.asdict(cfg), "ran": True, **summary(runs, tests, cfg)}
    from gbml.report.study_figures import ablation_bars, instability_curves

    curves = pd.DataFrame([{"arm": a, "seed": s, **row} for (a, s), rows in histories.items() for row in rows])
    keep = [c for c in ("arm", "seed", "step", "train_loss", "train_acc", "val_acc") if c in curves]
    write_text_atomic(out / "curves.csv", curves[keep].to_csv(index=False, float_format="%.6f"))
    final = pd.DataFrame([{"arm": a, "seed": s, **r} for (a, s), r in runs.items()])
    write_text_atomic(out / "final.csv", final.to_csv(index=False, float_format="%.6f"))
    instability_curves(histories, cfg, out / "instability.png")
    ablation_bars(metrics, cfg, out / "ablation.png")
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def step_metrics(metrics: dict) -> list[tuple[str, float, int]]:
    """Each arm's test accuracy as an MLflow metric (step 0)."""
    return [(f"accuracy.{arm}", r["accuracy"], 0) for arm, r in metrics.get("arms", {}).items()]
