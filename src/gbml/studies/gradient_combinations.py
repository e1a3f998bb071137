"""Which inner-loop gradients make meta-learning work? (Nichol, Achiam, Schulman 2018, section 6.2,
Figure 3.)

A task's inner loop takes k plain SGD steps on k disjoint minibatches (``gbml.studies.first_order``)
and each arm meta-trains with one combination S of their gradients g1..gk as its update: S = {1}
is joint training (the gradient at phi itself), {k} alone is first-order MAML with k steps (the
reference's ``--foml``), {1..k} is Reptile with k steps. As the reference's commands, an arm
whose last gradient is g_k trains on tasks of exactly k x inner_batch examples (``--train-shots
5k``, ``--inner-iters k``), cycled once through in k disjoint minibatches; its averaged arms (1/k
of a sum) are the sums at eps / k, the same direction with a smaller step, and are not run here.

Every arm of a seed starts from the same initialisation and scores its curve on the same held-out
tasks (the test split, adapted as the reference's evaluation: ``eval_inner_iters`` SGD steps of
``eval_inner_batch``), so arms differ only in their update and the comparisons pair task by task.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch

from gbml.algorithms.core import minibatch_indices
from gbml.errors import ConfigError, Fix, PipelineError
from gbml.io import staged_dir, write_json_atomic, write_text_atomic
from gbml.stats import mean_ci95
from gbml.studies.config import GradientCombinationsConfig, arm_gradients
from gbml.studies.first_order import Batches, not_run_summary, train_and_score
from gbml.studies.units import grid_units, summary_outputs_from, unit_names_from

UNIT_FLAGS = ("arm", "seed")   # one measured unit: an arm trained from one seed
OUTPUTS = ("curves.csv", "final.csv", "curves.png", "metrics.json")


def disjoint_batches(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int,
                     generator: torch.Generator) -> Batches:
    """``steps`` minibatches of ``batch`` examples, no example in two (the reference's cycling
    sampler over a mini-dataset of exactly ``steps * batch`` examples)."""
    if batch * steps > len(y):
        raise ValueError(f"{steps} disjoint minibatches of {batch} need {batch * steps} examples, the task has {len(y)}")
    return [(x[i], y[i]) for i in (i.to(y.device) for i in minibatch_indices(len(y), batch, steps, False, generator))]


def unit_dir(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def measure_unit(params: dict, cfg: GradientCombinationsConfig, unit: dict, workspace, measured: Path) -> Path:
    """Train one arm from one seed on Omniglot's training split and write its held-out curve
    (``curve.csv``: iteration x task accuracy) to ``measured/<arm>-seed<seed>/``, whole or not at all."""
    arm, seed = unit["arm"], int(unit["seed"])
    if arm not in cfg.arms:
        raise ConfigError(f"studies.gradient_combinations.arms {list(cfg.arms)} does not include {arm!r}")
    if seed not in cfg.seeds:
        raise ConfigError(f"studies.gradient_combinations.seeds {list(cfg.seeds)} does not include {seed}")
    indices = arm_gradients(arm)
    rows = train_and_score(params, cfg, workspace, seed, cfg.train_shots(arm),
                           lambda task, g: disjoint_batches(task.support_x, task.support_y, cfg.inner_batch, max(indices), g),
                           lambda k: indices, desc=f"arm {label(arm)}")
    out = Path(measured) / unit_dir(arm, seed)
    with staged_dir(out) as tmp:
        write_text_atomic(tmp / "curve.csv", pd.DataFrame(rows).to_csv(index=False))
    return out


def units(cfg: GradientCombinationsConfig) -> list[dict]:
    return grid_units(arm=cfg.arms, seed=cfg.seeds)


unit_names = unit_names_from(units, unit_dir)           # under studies/gradient_combinations/
summary_outputs = summary_outputs_from(OUTPUTS)


def measured_files(params: dict, cfg: GradientCombinationsConfig) -> list[str]:
    """The files ``summarise`` reads, under the measurements' directory."""
    return [f"{unit_dir(**unit)}/curve.csv" for unit in units(cfg)]


def label(arm: str) -> str:
    return " + ".join(arm.split("_"))


def summary(curves: pd.DataFrame, cfg: GradientCombinationsConfig) -> dict:
    """Per arm and curve point, the mean accuracy with its 95% interval over seeds x tasks; at the
    last point, each arm against joint training (g1) and each sum against the last gradient alone
    with the same k, paired task by task (every arm scores the same tasks)."""
    per_point = {arm: [dict(zip(("iteration", "accuracy", "ci95"), (int(it), *mean_ci95(g["accuracy"]))))
                       for it, g in group.groupby("iteration")]
                 for arm, group in curves.groupby("arm", sort=False)}
    last = curves[curves["iteration"] == curves["iteration"].max()].sort_values(["seed", "task"])
    final = {arm: g["accuracy"].to_numpy() for arm, g in last.groupby("arm", sort=False)}
    compared = [(arm, "g1") for arm in final if arm != "g1" and "g1" in final]
    for arm in final:
        k = max(arm_gradients(arm))
        if arm_gradients(arm) == list(range(1, k + 1)) and k > 1 and f"g{k}" in final:
            compared.append((arm, f"g{k}"))
    differences = {f"{a}-vs-{b}": dict(zip(("change", "ci95"), mean_ci95(final[a] - final[b]))) for a, b in compared}
    return {"curves": per_point,
            "final": {arm: dict(zip(("accuracy", "ci95"), mean_ci95(v))) for arm, v in final.items()},
            "differences": differences}


def step_metrics(metrics: dict) -> list[tuple[str, float, int]]:
    """Each arm's held-out curve as an MLflow series (``accuracy.<arm>``, step = meta-iteration)."""
    return [(f"accuracy.{arm}", p["accuracy"], p["iteration"]) for arm, points in metrics.get("curves", {}).items()
            for p in points]


def summarise(params: dict, cfg: GradientCombinationsConfig, measured: Path, out: Path) -> dict:
    """Gather every arm's curves (``measured/<arm>-seed<seed>``) into ``out``: curves.csv (per arm
    and point), final.csv, curves.png and metrics.json; with no seeds in this profile, only
    metrics.json saying the study was not run."""
    out.mkdir(parents=True, exist_ok=True)
    if (skipped := not_run_summary(params, cfg, out, OUTPUTS)) is not None:
        return skipped
    missing = [unit_dir(**u) for u in units(cfg) if not (Path(measured) / unit_dir(**u) / "curve.csv").is_file()]
    if missing:
        raise PipelineError(f"gradient combinations: no curves for {', '.join(missing)} in {measured}; train them "
                            "first", fix=Fix("study", "gradient_combinations"))
    curves = pd.concat([pd.read_csv(Path(measured) / unit_dir(**u) / "curve.csv").assign(**u) for u in units(cfg)],
                       ignore_index=True)
    metrics = {"config": dataclasses.asdict(cfg), "ran": True, **summary(curves, cfg)}
    from gbml.report.study_figures import gradient_combination_curves

    table = pd.DataFrame([{"arm": arm, **point} for arm, points in metrics["curves"].items() for point in points])
    write_text_atomic(out / "curves.csv", table.to_csv(index=False, float_format="%.6f"))
    final = pd.DataFrame([{"arm": arm, **r} for arm, r in metrics["final"].items()])
    write_text_atomic(out / "final.csv", final.to_csv(index=False, float_format="%.6f"))
    gradient_combination_curves(metrics["curves"], cfg, out / "curves.png")
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
