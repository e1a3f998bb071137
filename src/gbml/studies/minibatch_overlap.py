"""Does first-order MAML need its last minibatch apart from the others? (Nichol, Achiam, Schulman
2018, section 6.3, Figure 4.)

First-order MAML's update is the last inner minibatch's gradient after the earlier steps
(``gbml.studies.first_order``). The reference's FOML draws that minibatch like the others, from
the task's ``train_shots`` examples per class, so it may repeat examples the earlier steps
already fit (``foml_shared``); with ``--foml-tail`` it is ``tail_shots`` examples per class held out
from the earlier steps (``foml_separate``). Reptile (the sum of every step's gradient) draws all
its minibatches like the shared tail. Minibatches come by cycling through the examples in fresh
random orders (a minibatch may straddle two passes) or by independent draws with replacement
(``replacement``). Each unit -- a variant, a sampling, a count of inner iterations and a seed --
meta-trains a network and scores it on the same held-out tasks; the figure plots final accuracy
against inner iterations, as the paper's.
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
from gbml.studies.config import MinibatchOverlapConfig
from gbml.studies.first_order import Batches, not_run_summary, train_and_score
from gbml.studies.units import grid_units, summary_outputs_from, unit_names_from

UNIT_FLAGS = ("variant", "sampling", "inner_iters", "seed")
OUTPUTS = ("final.csv", "overlap.png", "metrics.json")
LABELS = {"reptile": "Reptile", "foml_shared": "FOMAML, shared tail", "foml_separate": "FOMAML, separate tail"}


def tail_split(y: torch.Tensor, ways: int, tail_shots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the earlier minibatches' examples and of the tail: the first ``tail_shots``
    examples of each class go to the tail (a task's examples of a class are in random order)."""
    rank = torch.zeros_like(y)
    for c in range(ways):
        members = (y == c).nonzero().flatten()
        rank[members] = torch.arange(len(members), device=y.device)
    in_tail = rank < tail_shots
    return (~in_tail).nonzero().flatten(), in_tail.nonzero().flatten()


def minibatches(x: torch.Tensor, y: torch.Tensor, cfg: MinibatchOverlapConfig, variant: str, sampling: str,
                iters: int, generator: torch.Generator) -> Batches:
    """A task's ``iters`` inner minibatches as the reference draws them (``FOML._mini_batches``)."""
    replacement = sampling == "replacement"
    if variant != "foml_separate":
        return [(x[i], y[i]) for i in minibatch_indices(len(y), cfg.inner_batch, iters, replacement, generator)]
    rest, tail = tail_split(y, cfg.ways, cfg.tail_shots)
    earlier = [rest[i] for i in minibatch_indices(len(rest), cfg.inner_batch, iters - 1, replacement, generator)]
    return [(x[i], y[i]) for i in (*earlier, tail)]


def update_indices(variant: str, k: int) -> list[int]:
    """The gradients the update sums: all k for Reptile, the last one for first-order MAML."""
    return list(range(1, k + 1)) if variant == "reptile" else [k]


def unit_dir(variant: str, sampling: str, inner_iters: int, seed: int) -> str:
    return f"{variant}-{sampling}-k{inner_iters}-seed{seed}"


def units(cfg: MinibatchOverlapConfig) -> list[dict]:
    return grid_units(variant=cfg.variants, sampling=cfg.samplings, inner_iters=cfg.inner_iters, seed=cfg.seeds)


unit_names = unit_names_from(units, unit_dir)
summary_outputs = summary_outputs_from(OUTPUTS)


def measure_unit(params: dict, cfg: MinibatchOverlapConfig, unit: dict, workspace, measured: Path) -> Path:
    """Train one unit and write its held-out scores (``curve.csv``) to ``measured/<unit>/``."""
    variant, sampling, iters, seed = unit["variant"], unit["sampling"], int(unit["inner_iters"]), int(unit["seed"])
    for key, value, allowed in (("variants", variant, cfg.variants), ("samplings", sampling, cfg.samplings),
                                ("inner_iters", iters, cfg.inner_iters), ("seeds", seed, cfg.seeds)):
        if value not in allowed:
            raise ConfigError(f"studies.minibatch_overlap.{key} {list(allowed)} does not include {value!r}")
    rows = train_and_score(params, cfg, workspace, seed, cfg.train_shots,
                           lambda task, g: minibatches(task.support_x, task.support_y, cfg, variant, sampling, iters, g),
                           lambda k: update_indices(variant, k), desc=f"{LABELS[variant]}, {sampling}, k={iters}")
    out = Path(measured) / unit_dir(variant, sampling, iters, seed)
    with staged_dir(out) as tmp:
        write_text_atomic(tmp / "curve.csv", pd.DataFrame(rows).to_csv(index=False))
    return out


def measured_files(params: dict, cfg: MinibatchOverlapConfig) -> list[str]:
    """The curves ``summarise`` reads, under the measurements' directory."""
    return [f"{name}/curve.csv" for name in unit_names(params, cfg)]


def summary(scores: pd.DataFrame) -> dict:
    """Final accuracy per variant, sampling and k (mean and 95% interval over seeds x tasks), and
    at each sampling and k the separate tail against the shared one and Reptile against the
    shared tail, paired task by task (every unit scores the same tasks)."""
    last = scores[scores["iteration"] == scores["iteration"].max()].sort_values(["seed", "task"])
    values = {key: g["accuracy"].to_numpy() for key, g in last.groupby(["variant", "sampling", "inner_iters"], sort=False)}
    final: dict = {}
    for (variant, sampling, k), v in values.items():
        final.setdefault(variant, {}).setdefault(sampling, {})[str(k)] = dict(zip(("accuracy", "ci95"), mean_ci95(v)))
    differences: dict = {}
    for (variant, sampling, k), v in values.items():
        shared = values.get(("foml_shared", sampling, k))
        if variant != "foml_shared" and shared is not None:
            differences.setdefault(f"{variant}-vs-foml_shared", {}).setdefault(sampling, {})[str(k)] = dict(
                zip(("change", "ci95"), mean_ci95(v - shared)))
    return {"final": final, "differences": differences}


def step_metrics(metrics: dict) -> list[tuple[str, float, int]]:
    """Final accuracy against inner iterations as MLflow series (``accuracy.<variant>.<sampling>``, step = k)."""
    return [(f"accuracy.{v}.{s}", r["accuracy"], int(k)) for v, by_s in metrics.get("final", {}).items()
            for s, by_k in by_s.items() for k, r in by_k.items()]


def summarise(params: dict, cfg: MinibatchOverlapConfig, measured: Path, out: Path) -> dict:
    """Gather every unit (``measured/<unit>``) into ``out``: final.csv, overlap.png, metrics.json;
    with no seeds in this profile, only metrics.json saying the study was not run."""
    out.mkdir(parents=True, exist_ok=True)
    if (skipped := not_run_summary(params, cfg, out, OUTPUTS)) is not None:
        return skipped
    missing = [n for n in unit_names(params, cfg) if not (Path(measured) / n / "curve.csv").is_file()]
    if missing:
        raise PipelineError(f"minibatch overlap: no scores for {', '.join(missing)} in {measured}; train them first",
                            fix=Fix("study", "minibatch_overlap"))
    scores = pd.concat([pd.read_csv(Path(measured) / unit_dir(**u) / "curve.csv").assign(**u) for u in units(cfg)],
                       ignore_index=True)
    metrics = {"config": dataclasses.asdict(cfg), "ran": True, **summary(scores)}
    from gbml.report.study_figures import overlap_curves

    table = pd.DataFrame([{"variant": v, "sampling": s, "inner_iters": int(k), **r}
                          for v, by_s in metrics["final"].items() for s, by_k in by_s.items() for k, r in by_k.items()])
    write_text_atomic(out / "final.csv", table.to_csv(index=False, float_format="%.6f"))
    overlap_curves(metrics["final"], cfg, out / "overlap.png")
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
