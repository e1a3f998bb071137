"""Rapid learning or feature reuse? (Raghu, Raghu, Bengio, Vinyals 2020, sections 3-4.)

Two measurements on the trained MAML and ANIL runs of the pipeline, on meta-test tasks:

* **Representation similarity** (their Figure 2): each layer's representation of a task's
  queries before the inner loop (the meta-learned initialisation) and after it (the task's
  adapted parameters), compared with CCA and linear CKA (``gbml.studies.similarity``). Their
  claim: the conv layers barely change (CCA > 0.9, CKA ~ 1), the head does (CCA < 0.5).
* **Freezing layers at test time** (their Table 1): adapt only the layers after the first k
  (k = 0: MAML as trained; k = 4: the head alone, ANIL's inner loop) and score the same tasks.
  Their claim: freezing even every conv layer hardly changes MAML's accuracy.

Representations are those of the transductive forward pass (the queries of a task as one
batch, batch norm on their statistics), the mode Raghu et al.'s MAML code evaluates in.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from gbml.algorithms.core import Params
from gbml.config import grid, resolved_run_config
from gbml.data.prepared import load_split
from gbml.data.tasks import EpisodeSampler, task_generators
from gbml.errors import ConfigError, Fix, PipelineError
from gbml.factory import resolve_device, seed_everything
from gbml.io import staged_dir, write_json_atomic, write_text_atomic
from gbml.stats import mean_ci95
from gbml.studies.config import FeatureReuseConfig
from gbml.studies.similarity import linear_cka, mean_cca, positions_as_examples


UNIT_FLAGS = ("algorithm", "ways", "shots", "seed")   # one measured unit: a trained run of the grid
# The summary's files (reports/studies/feature_reuse/); each run's measurements: similarity.csv, freezing.csv.
OUTPUTS = ("similarity.csv", "freezing.csv", "similarity.png", "freezing.png", "metrics.json")


def representations(model, params: Params, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's output for ``x`` ([n, C, H, W]) under ``params``: the conv blocks' maps after
    their activation (and pooling) and the head's logits."""
    modules = {**{f"conv{i + 1}": block for i, block in enumerate(model.blocks)}, "head": model.classifier}
    out, hooks = {}, []
    for name, module in modules.items():
        hooks.append(module.register_forward_hook(
            lambda _m, _inputs, output, name=name: out.__setitem__(name, output.detach())))
    # The blocks see a group axis ([1, n, C, H, W], Conv4.features): drop it.
    try:
        with torch.no_grad():
            functional_call(model, params, (x,))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: h[0] if h.dim() == 5 else h for name, h in out.items()}


def with_frozen_layers(algorithm, k: int):
    """A view of ``algorithm`` whose test-time inner loop leaves the first ``k`` conv layers (their
    batch norm included) at the meta-learned initialisation."""
    prefixes = tuple(f"blocks.{i}." for i in range(k))
    frozen = copy.copy(algorithm)
    frozen.inner_names = [n for n in algorithm.inner_names if not n.startswith(prefixes)]
    return frozen


def similarity_rows(algorithm, images: torch.Tensor, ways: int, shots: int, cfg: FeatureReuseConfig,
                    counts=None) -> list[dict]:
    """Per task and layer: CKA and CCA between the queries' representations before and after
    adaptation to the task's support set."""
    sampler = EpisodeSampler(images, ways, shots, cfg.queries, seed=cfg.seed, counts=counts)
    indices = range(cfg.similarity_tasks)
    tasks = sampler.tasks_at(indices)
    adapted = algorithm.adapt(tasks.support_x, tasks.support_y, task_generators(cfg.seed, indices, "adapt"))
    rows = []
    for i in indices:
        before = representations(algorithm.model, algorithm.params, tasks.query_x[i])
        after = representations(algorithm.model, {k: v[i] for k, v in adapted.items()}, tasks.query_x[i])
        for layer in before:
            rows.append({"task": i, "layer": layer, "cka": linear_cka(before[layer], after[layer]),
                         "cca": mean_cca(positions_as_examples(before[layer]), positions_as_examples(after[layer]))})
    return rows


def freezing_rows(algorithm, evaluate, images: torch.Tensor, ways: int, shots: int, cfg: FeatureReuseConfig,
                  counts=None) -> list[dict]:
    """Accuracy (mean and 95% interval over tasks) with the first k conv layers frozen at test
    time, k = 0..4, every k on the same tasks; ``evaluate`` is ``gbml.evaluate.evaluate``."""
    rows = []
    for k in range(len(algorithm.model.blocks) + 1):
        accs = evaluate(with_frozen_layers(algorithm, k), images, ways, shots, cfg.freeze_queries,
                        cfg.freeze_tasks, cfg.seed, modes=tuple(cfg.modes), progress=False, counts=counts)
        for mode, values in accs.items():
            mean, half = mean_ci95(values)
            rows.append({"frozen": k, "mode": mode, "accuracy": mean, "ci95": half,
                         "per_task": np.asarray(values)})
    return rows


def measure_run(params: dict, spec, cfg: FeatureReuseConfig, workspace, out_dir: Path) -> None:
    """Measure one trained run (``workspace.runs/<spec.name>``) on its dataset's meta-test split
    and write ``out_dir`` whole or not at all: similarity.csv (task x layer) and, for
    ``cfg.freeze_algorithms``, freezing.csv (k x mode x task)."""
    from gbml.evaluate import evaluate
    from gbml.trained_runs import load_members

    run_cfg = resolved_run_config(params, spec)
    seed_everything(spec.seed, int(run_cfg["training"].get("threads", 0)))
    split = load_split(workspace.prepared(spec.dataset), run_cfg["evaluate"].get("split", "test"),
                       run_cfg.get("data_view"))
    device = resolve_device(run_cfg["training"].get("device", "auto"))
    members, _ = load_members(spec, run_cfg, Path(workspace.runs) / spec.name, tuple(split.images.shape[2:]), device)
    fewest = int(split.images.shape[1] if split.counts is None else split.counts.min())
    for key, queries in (("queries", cfg.queries), ("freeze_queries", cfg.freeze_queries)):
        if spec.shots + queries > fewest:
            raise ConfigError(f"studies.feature_reuse.{key} {queries}: {spec.name}'s tasks need {spec.shots} + "
                              f"{queries} examples per class, the {spec.dataset} test split has {fewest}")
    images = split.images.to(device)
    similarity = pd.DataFrame(similarity_rows(members[0], images, spec.ways, spec.shots, cfg, split.counts))
    freezing = [{"frozen": r["frozen"], "mode": r["mode"], "task": t, "accuracy": a}
                for r in (freezing_rows(members[0], evaluate, images, spec.ways, spec.shots, cfg, split.counts)
                          if spec.algorithm in cfg.freeze_algorithms else [])
                for t, a in enumerate(r["per_task"])]
    with staged_dir(Path(out_dir)) as tmp:
        write_text_atomic(tmp / "similarity.csv", similarity.to_csv(index=False, float_format="%.6f"))
        columns = ["frozen", "mode", "task", "accuracy"]
        write_text_atomic(tmp / "freezing.csv", pd.DataFrame(freezing, columns=columns).to_csv(index=False))


def measure_unit(params: dict, cfg: FeatureReuseConfig, unit: dict, workspace, measured: Path) -> Path:
    """Measure the trained run ``unit["spec"]`` into ``measured/<run>/``."""
    spec = unit["spec"]
    if spec.algorithm not in cfg.algorithms:
        raise ConfigError(f"studies.feature_reuse.algorithms {list(cfg.algorithms)} does not include {spec.algorithm!r}")
    measure_run(params, spec, cfg, workspace, Path(measured) / spec.name)
    return Path(measured) / spec.name


def step_metrics(metrics: dict) -> list[tuple[str, float, int]]:
    """MLflow series beyond the summary's scalars: none."""
    return []


def studied_runs(params: dict, cfg: FeatureReuseConfig) -> list:
    return [spec for spec in grid(params) if spec.algorithm in cfg.algorithms]


def unit_names(params: dict, cfg: FeatureReuseConfig) -> list[str]:
    """The measured units' directories under studies/feature_reuse/: one per trained run studied."""
    return [spec.name for spec in studied_runs(params, cfg)]


def summary_outputs(params: dict, cfg: FeatureReuseConfig) -> tuple[str, ...]:
    return OUTPUTS


def measured_files(params: dict, cfg: FeatureReuseConfig) -> list[str]:
    """The measurements ``summarise`` reads, under the measurements' directory."""
    return [f"{spec.name}/{name}" for spec in studied_runs(params, cfg) for name in ("similarity.csv", "freezing.csv")]


def summarise(params: dict, cfg: FeatureReuseConfig, measured: Path, out: Path) -> dict:
    """Gather the measurements of every grid run of ``cfg.algorithms`` (``measured/<run>``) into
    ``out``: similarity.csv, freezing.csv (per run, k and mode), the figures and metrics.json."""
    cells = studied_runs(params, cfg)
    missing = [spec.name for spec in cells if not (Path(measured) / spec.name / "similarity.csv").is_file()]
    if missing:
        raise PipelineError(f"feature reuse: no measurements of {', '.join(missing)} in {measured}; measure them "
                            "first", fix=Fix("study", "feature_reuse"))
    similarity, freezing = [], []
    for spec in cells:
        cell = {"algorithm": spec.algorithm, "setting": spec.setting, "seed": spec.seed}
        similarity.append(pd.read_csv(Path(measured) / spec.name / "similarity.csv").assign(**cell))
        per_task = pd.read_csv(Path(measured) / spec.name / "freezing.csv")
        for (k, mode), group in per_task.groupby(["frozen", "mode"], sort=False):
            values = group.sort_values("task")["accuracy"].to_numpy()
            mean, half = mean_ci95(values)
            freezing.append({**cell, "frozen": int(k), "mode": mode, "accuracy": mean, "ci95": half, "per_task": values})
    return write_outputs(pd.concat(similarity, ignore_index=True), freezing, cfg, Path(out))


def summary(similarity: pd.DataFrame, freezing: list[dict]) -> dict:
    """Means with 95% intervals: per algorithm, setting and layer over seeds x tasks; per
    setting, k and mode over seeds x tasks (the tasks are the same for every k)."""
    sims = {}
    for (algorithm, setting, layer), group in similarity.groupby(["algorithm", "setting", "layer"], sort=False):
        sims.setdefault(algorithm, {}).setdefault(setting, {})[layer] = {
            f"{m}_{k}": v for m in ("cka", "cca") for k, v in zip(("mean", "ci95"), mean_ci95(group[m].dropna()))}
    frozen: dict = {}
    for row in freezing:
        key = (row["algorithm"], row["setting"], row["frozen"], row["mode"])
        frozen.setdefault(key, []).append(row["per_task"])
    freeze = {}
    for (algorithm, setting, k, mode), values in frozen.items():
        mean, half = mean_ci95(np.concatenate(values))
        # Paired with k = 0 task by task (the same tasks): the change freezing makes.
        change, change_half = mean_ci95(np.concatenate(values) - np.concatenate(frozen[algorithm, setting, 0, mode]))
        freeze.setdefault(algorithm, {}).setdefault(setting, {}).setdefault(mode, {})[k] = {
            "mean": mean, "ci95": half, "change": change, "change_ci95": change_half}
    return {"similarity": sims, "freezing": freeze}


def write_outputs(similarity: pd.DataFrame, freezing: list[dict], cfg: FeatureReuseConfig, out: Path) -> dict:
    from gbml.report.study_figures import freezing_curves, similarity_bars

    out.mkdir(parents=True, exist_ok=True)
    metrics = {"config": dataclasses.asdict(cfg), **summary(similarity, freezing)}
    write_text_atomic(out / "similarity.csv", similarity.to_csv(index=False, float_format="%.6f"))
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "per_task"} for r in freezing])
    write_text_atomic(out / "freezing.csv", table.to_csv(index=False, float_format="%.6f"))
    similarity_bars(metrics["similarity"], out / "similarity.png")
    freezing_curves(metrics["freezing"], out / "freezing.png")
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
