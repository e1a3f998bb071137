"""Meta-training one grid cell.

``train_run`` builds the model and algorithm from a resolved run config, meta-trains for
``meta_iters`` iterations, and writes into the run directory (atomically: a temp directory
renamed into place at the end, so a killed run leaves no half-written output):

* ``config.json``: the resolved configuration (it travels with the artifact);
* ``checkpoint.pt``: the final algorithm state (``torch.load(..., weights_only=True)``-safe);
* ``history.json``: the learning curve (training loss/accuracy and periodic validation);
* ``run.json``: the MLflow run id, wall time and throughput.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gbml.config import RunSpec, write_json_atomic
from gbml.data.omniglot import load_split
from gbml.data.tasks import EpisodeSampler
from gbml.evaluate import evaluate
from gbml.factory import build_algorithm, build_model, resolve_device, seed_everything


def curve_split_name(prepared_dir: Path) -> str:
    """Validation classes if the split has any, else the test classes (Reptile's protocol has
    no validation split; its reference code also tracked test accuracy during training)."""
    val = load_split(prepared_dir, "val")
    return "val" if val.images.shape[0] > 0 else "test"


def train_run(spec: RunSpec, cfg: dict[str, Any], prepared_dir: Path, run_dir: Path,
              tracker=None, tags: dict[str, Any] | None = None, progress: bool = True) -> dict:
    """Meta-train the run ``spec`` with resolved config ``cfg``; returns the run summary."""
    training = cfg["training"]
    seed_everything(spec.seed, int(training.get("threads", 0)))
    device = resolve_device(training.get("device", "auto"))
    train_images = load_split(prepared_dir, "train").images.to(device)
    curve_name = curve_split_name(prepared_dir)
    curve_images = load_split(prepared_dir, curve_name).images.to(device)

    model = build_model(cfg["model"], spec.ways, tuple(train_images.shape[2:])).to(device)
    algorithm = build_algorithm(spec, cfg["algorithm"], model)
    shots, queries = algorithm.train_episode_shape
    sampler = EpisodeSampler(train_images, spec.ways, shots, queries, seed=spec.seed)

    run_id = tracker.start_run(spec.name, tags or {}, cfg) if tracker else None
    tmp_dir = run_dir.with_name(run_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        history, seconds = meta_train(algorithm, sampler, curve_images, spec, training, device, progress)
        summary = finish_run(algorithm, cfg, spec, history, seconds, tmp_dir, run_id, curve_name)
        if tracker:
            log_training(tracker, run_id, history, summary, tmp_dir)
            tracker.finish(run_id)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if tracker:
            tracker.finish(run_id, status="FAILED")
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    os.replace(tmp_dir, run_dir)
    return summary


def meta_train(algorithm, sampler: EpisodeSampler, curve_images: torch.Tensor, spec: RunSpec,
               training: dict, device: torch.device, progress: bool) -> tuple[list[dict], float]:
    """The outer loop. Returns the history rows and the training wall time (curve points excluded)."""
    log_every = int(training.get("log_every", 50))
    curve_every = int(training.get("curve_every", 0)) or algorithm.meta_iters
    history: list[dict] = []
    window: list[dict] = []
    seconds = 0.0
    bar = tqdm(range(algorithm.meta_iters), desc=spec.name, disable=not progress, mininterval=2)
    for iteration in bar:
        start = time.perf_counter()
        episodes = [e.to(device) for e in sampler.sample_batch(algorithm.meta_batch)]
        window.append(algorithm.meta_step(episodes, iteration))
        seconds += time.perf_counter() - start
        step = iteration + 1
        if step % log_every == 0 or step == algorithm.meta_iters:
            row = {"step": step, **{k: float(np.mean([m[k] for m in window])) for k in window[0]}}
            window = []
            if step % curve_every == 0 or step == algorithm.meta_iters:
                row["val_acc"] = curve_point(algorithm, curve_images, spec, training, device)
            history.append(row)
            bar.set_postfix(acc=f"{row['train_acc']:.3f}", refresh=False)
    return history, seconds


def curve_point(algorithm, images: torch.Tensor, spec: RunSpec, training: dict, device) -> float:
    """Transductive accuracy on a fixed small set of held-out tasks (the learning curve)."""
    accs = evaluate(algorithm, images, spec.ways, spec.shots, queries=1,
                    num_tasks=int(training.get("curve_tasks", 20)), seed=int(training.get("curve_seed", 999)),
                    modes=("transductive",), device=device, progress=False)
    return float(accs["transductive"].mean())


def finish_run(algorithm, cfg: dict, spec: RunSpec, history: list[dict], seconds: float,
               out_dir: Path, run_id: str | None, curve_split: str) -> dict:
    tmp = out_dir / "checkpoint.pt.tmp"
    torch.save(algorithm.state_dict(), tmp)
    tmp.replace(out_dir / "checkpoint.pt")
    iters, batch = algorithm.meta_iters, algorithm.meta_batch
    summary = {
        "run": dataclasses.asdict(spec), "mlflow_run_id": run_id, "meta_iters": iters,
        "train_seconds": round(seconds, 2), "tasks_per_second": round(iters * batch / max(seconds, 1e-9), 2),
        "final_train_acc": history[-1]["train_acc"], "final_val_acc": history[-1].get("val_acc", math.nan),
        "curve_split": curve_split,
    }
    write_json_atomic(out_dir / "config.json", cfg)
    write_json_atomic(out_dir / "history.json", history)
    write_json_atomic(out_dir / "run.json", summary)
    return summary


def log_training(tracker, run_id: str, history: list[dict], summary: dict, out_dir: Path) -> None:
    rows = [(k, v, r["step"]) for r in history for k, v in r.items() if k != "step"]
    rows += [("train_seconds", summary["train_seconds"], 0), ("train_tasks_per_second", summary["tasks_per_second"], 0)]
    tracker.log_metrics(run_id, rows)
    tracker.set_tags(run_id, {"gbml.curve_split": summary["curve_split"]})
    for name in ("config.json", "history.json", "checkpoint.pt"):
        tracker.log_artifact(run_id, out_dir / name)
