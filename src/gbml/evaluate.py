"""Meta-test evaluation in both protocols of Nichol et al. (2018), section 5.

After adapting on the support set, queries are classified either

* **transductively**: all queries of the task in one forward pass, so batch norm uses the query
  set's statistics (what MAML's and Reptile's reference code do when "transduction" is on); or
* **non-transductively**: each query in a forward pass with the support set alone, so its
  prediction cannot depend on the other queries. This runs as one grouped forward pass
  ([queries, support + 1, ...]; the model computes batch-norm statistics per group).

A third mode, ``nil``, is Raghu et al.'s (2020, section 5.1) "no inner loop" classifier: no
adaptation and no head; the meta-learned body's penultimate features of each query are compared
by cosine similarity with those of the support examples, and the similarities, softmax-normalised,
weight the support labels (the Matching Networks rule their paper cites). Support and query sets
pass through the body as separate batches, so the query features use the query batch's
statistics, as in the transductive mode.

Test tasks are drawn from a fixed seed, so every algorithm and training seed is scored on the
same tasks; per-task accuracies are returned so intervals can be recomputed later, and pair
across runs: task ``i`` (its episode and the minibatches its adaptation draws) is a function of
the seed, the split, ways, shots, queries and ``i`` alone (``EpisodeSampler.tasks_at``), not of
the chunk it is scored in, the modes or the device.

Tasks are scored in chunks, each at once: every task adapts in one inner loop over per-task
parameters (the model's ``forward_tasks``) and each mode's queries go through one (grouped)
forward pass, with no Python loop over tasks or queries.

A run trained with a checkpoint ensemble (MAML++, ``runs/<name>/ensemble/members.json``) is
scored as that ensemble: every member adapts to the support set and their query logits are
averaged, as in MAML++'s reference code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gbml.algorithms.core import Params
from gbml.config import PipelineError
from gbml.errors import Fix
from gbml.data.prepared import load_split
from gbml.data.tasks import Episode, EpisodeSampler, task_generators
from gbml.factory import resolve_device, seed_everything
from gbml.io import staged_dir, write_json_atomic
from gbml.lineage import split_inputs
from gbml.perf import autocast, configure_process, peak_memory_mb
from gbml.progress import progress as progress_bar
from gbml.stats import mean_ci95
from gbml.system_metrics import system_metrics
from gbml.trained_runs import load_members

MODES = ("transductive", "non_transductive")
ALL_MODES = MODES + ("nil",)
# Images in flight per evaluation chunk (the non-transductive mode's support copies included):
# large enough to batch well, small enough for a laptop's memory.
CHUNK_IMAGES = 4096


def predict_query(predict: Callable[[Params, torch.Tensor], torch.Tensor], params: Params,
                  episode: Episode, mode: str) -> torch.Tensor:
    """Logits for the query set of ``episode`` under the given evaluation ``mode``: a stack of
    tasks (``predict`` and ``adapt``'s parameters, with a task axis), or one task (a plain
    model's predict and parameters). Non-transductively every query becomes a group of the support
    set plus itself, ``[..., queries, support + 1, C, H, W]``, and all groups go through one
    forward pass."""
    if mode == "transductive":
        return predict(params, episode.query_x)
    if mode == "non_transductive":
        query, support = episode.query_x, episode.support_x    # [..., n, C, H, W]
        copies = support.unsqueeze(-5).expand(*query.shape[:-3], *support.shape[-4:])
        groups = torch.cat([copies, query.unsqueeze(-4)], dim=-4)
        return predict(params, groups)[..., -1, :]
    raise ValueError(f"unknown evaluation mode {mode!r}; allowed: {', '.join(ALL_MODES)}")


def nil_log_probs(features: Callable[[torch.Tensor], torch.Tensor], episode: Episode,
                  ways: int) -> torch.Tensor:
    """NIL's class log-probabilities for the query set: cosine-similarity attention over the
    support examples' features, summed per class (Matching Networks' rule). Works on one
    episode or on a stack of them (the model's grouped input keeps batch norm per task)."""
    support = F.normalize(features(episode.support_x), dim=-1)
    query = F.normalize(features(episode.query_x), dim=-1)
    attention = (query @ support.transpose(-1, -2)).softmax(dim=-1)
    return (attention @ F.one_hot(episode.support_y, ways).to(attention)).log()


def ensemble_logits(members: Sequence, tasks: Episode, ways: int, indices: tuple[int, Sequence[int]],
                    modes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Query logits per mode for a stack of tasks, averaged over ``members`` (one algorithm for a
    single model). Each member adapts once; the modes differ only in how the adapted network sees
    the queries. ``indices`` is the evaluation's seed and the tasks' indices: each task's
    adaptation draws its minibatches (Reptile) from a generator of its own."""
    seed, task_indices = indices
    total: dict[str, torch.Tensor] = {}
    adapt_modes = [m for m in modes if m != "nil"]
    for member in members:
        scores = {}
        if "nil" in modes:
            scores["nil"] = nil_log_probs(member.model.features, tasks, ways)
        if adapt_modes:
            generators = task_generators(seed, task_indices, "adaptation")   # the same draws for every member
            adapted = member.adapt(tasks.support_x, tasks.support_y, generators)
            scores.update({m: predict_query(member.predict, adapted, tasks, m) for m in adapt_modes})
        for mode, logits in scores.items():
            total[mode] = total[mode] + logits if mode in total else logits
    return {mode: logits / len(members) for mode, logits in total.items()}


def chunk_size(ways: int, shots: int, queries: int, modes: Sequence[str], images: int = CHUNK_IMAGES) -> int:
    """Tasks per evaluation chunk: ``images`` over the images one task puts in flight."""
    support, query = ways * shots, ways * queries
    per_task = support + query * (support + 1 if "non_transductive" in modes else 1)
    return max(1, images // per_task)


@torch.no_grad()
def evaluate(members, images: torch.Tensor, ways: int, shots: int, queries: int,
             num_tasks: int, seed: int, modes=MODES, device: torch.device | None = None,
             progress: bool = True, counts: torch.Tensor | None = None,
             chunk_images: int = CHUNK_IMAGES) -> dict[str, np.ndarray]:
    """Per-task query accuracies on ``num_tasks`` tasks for each mode, of one algorithm or of an
    ensemble (a list of algorithms whose logits are averaged); ``counts`` as ``EpisodeSampler``.
    Each chunk of tasks is scored at once."""
    members = members if isinstance(members, (list, tuple)) else [members]
    unknown = sorted(set(modes) - set(ALL_MODES))
    if unknown:
        raise ValueError(f"unknown evaluation modes {unknown}; allowed: {', '.join(ALL_MODES)}")
    if device is not None:
        images = images.to(device)
    sampler = EpisodeSampler(images, ways, shots, queries, seed=seed, counts=counts)
    acc = {mode: np.empty(num_tasks) for mode in modes}
    chunk = chunk_size(ways, shots, queries, modes, chunk_images)
    with progress_bar(total=num_tasks, desc="evaluate", unit="task", disable=not progress, mininterval=2) as bar:
        for start in range(0, num_tasks, chunk):
            indices = range(start, min(start + chunk, num_tasks))
            tasks = sampler.tasks_at(indices)
            logits = ensemble_logits(members, tasks, ways, (seed, indices), modes)
            for mode, values in logits.items():
                correct = (values.argmax(-1) == tasks.query_y).float().mean(-1)
                acc[mode][start: start + len(correct)] = correct.cpu().numpy()
            bar.update(len(tasks.query_y))
    return acc


def evaluate_run(spec, cfg: dict, prepared_dir, run_dir, out_dir, tracker=None,
                 tags: dict | None = None, progress: bool = True) -> dict:
    """Score a trained run on the meta-test split in every configured mode.

    Writes ``per_task.csv`` (one row per task and mode) and ``metrics.json`` (mean and 95% CI
    per mode) into ``out_dir`` atomically, and logs both into the training run's MLflow run.
    Cheap enough (seconds to a few minutes) that it is re-run rather than resumed.
    """
    ev, training = cfg["evaluate"], cfg["training"]
    seed_everything(spec.seed, int(training.get("threads", 0)))
    device = resolve_device(training.get("device", "auto"))
    configure_process(device)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "run.json").is_file():
        raise PipelineError(f"{run_dir} holds no finished training run: train it first.", fix=Fix("train", spec))
    summary = json.loads((run_dir / "run.json").read_text())
    run_id = summary.get("mlflow_run_id")
    if tracker and run_id:
        tracker.check_run(run_id)
        tracker.log_inputs(run_id, split_inputs(prepared_dir, (ev.get("split", "test"),), cfg.get("data_view")))
    split = load_split(prepared_dir, ev.get("split", "test"), cfg.get("data_view"))
    images = split.images.to(device)
    members, ensemble_steps = load_members(spec, cfg, run_dir, tuple(images.shape[2:]), device)

    start = time.perf_counter()
    with autocast(device, training.get("autocast", "none")), system_metrics(tracker, run_id):
        accs = evaluate(members, images, spec.ways, spec.shots, int(ev["queries"]), int(ev["num_tasks"]),
                        int(ev["seed"]), modes=tuple(ev["modes"]), device=device, progress=progress,
                        counts=split.counts)
    seconds = time.perf_counter() - start

    metrics = {"eval_seconds": round(seconds, 2), "num_tasks": int(ev["num_tasks"]),
               "queries_per_class": int(ev["queries"]), "mlflow_run_id": run_id,
               "ensemble_size": len(members), "ensemble_steps": ensemble_steps,
               "eval_peak_memory_mb": peak_memory_mb(device)}
    for mode, values in accs.items():
        mean, half = mean_ci95(values)
        metrics[f"test_acc_{mode}"], metrics[f"test_ci95_{mode}"] = mean, half

    with staged_dir(out_dir) as tmp_dir:   # evals/<run> appears whole, after the logging, or not at all
        with (tmp_dir / "per_task.csv").open("w") as f:
            f.write("task,mode,accuracy\n")
            for mode, values in accs.items():
                f.writelines(f"{t},{mode},{v:.6f}\n" for t, v in enumerate(values))
        write_json_atomic(tmp_dir / "metrics.json", metrics)
        if tracker and run_id:
            tracker.log_metrics(run_id, [(k, v, 0) for k, v in metrics.items()
                                         if isinstance(v, (int, float)) and k != "mlflow_run_id"])
            steps = {"gbml.ensemble_steps": " ".join(map(str, ensemble_steps))} if ensemble_steps else {}
            tracker.set_tags(run_id, {**(tags or {}), **steps})
            tracker.log_artifact(run_id, tmp_dir / "per_task.csv", "evaluation")
            tracker.log_artifact(run_id, tmp_dir / "metrics.json", "evaluation")
    return metrics
