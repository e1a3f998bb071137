"""Meta-training one grid cell.

``train_run`` builds the model and algorithm from a resolved run config, meta-trains for
``meta_iters`` iterations, and writes into the run directory (atomically: ``<run>.partial/``
swapped into place at the end, so a killed run leaves no half-written output):

* ``config.json``: the resolved configuration (it travels with the artifact);
* ``checkpoint.pt``: the final algorithm state (``torch.load(..., weights_only=True)``-safe);
* ``ensemble/``: for algorithms evaluated as an ensemble (MAML++'s ``ensemble_top_n``), the
  checkpoints with the best validation accuracy and ``ensemble/members.json`` naming them;
* ``history.json``: the learning curve (training loss/accuracy and periodic validation), and
  ``learning_curve.png``, its plot;
* ``run.json``: the MLflow run id, wall time and throughput.

Resuming. While it trains, a run lives in ``<run>.partial/``; every ``training.checkpoint_every``
iterations it writes ``resume.pt`` there atomically: the algorithm (model, optimisers, Reptile's
inner Adam moments, MAML++'s learned rates, inner-minibatch generators), the task sampler's
generator, torch's global RNG states, the learning curve so far and the MLflow run id. A run that
is killed (SIGKILL, pre-emption, an exception) keeps that directory; running the same command
again continues from the last ``resume.pt`` in the same MLflow run and ends with parameters
bitwise-equal to an uninterrupted run (tests/test_resume.py). Metrics reach MLflow once, at the
end, so a resumed run has no duplicate steps. A ``resume.pt`` whose configuration, data or code
differs from the run's (its run key) is discarded with a message, and training starts over.
(NumPy's and Python's generators are not saved: training draws nothing from them.)

Finishing. The final state is checkpointed too (whatever ``checkpoint_every`` says), then the
outputs are written and logged, the directory is swapped into place, and only then is
``resume.pt`` removed: a kill anywhere in that window makes the same command finish the run
without training again (a run directory still holding ``resume.pt`` is moved back to
``<run>.partial/`` first: ``reclaim_unfinished``).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import heapq
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gbml.config import ConfigError, PipelineError, RunSpec
from gbml.data.prepared import FewShotSplit, load_split, read_manifest, split_size
from gbml.data.tasks import EpisodeSampler
from gbml.evaluate import evaluate
from gbml.factory import build_algorithm, resolve_device, seed_everything
from gbml.errors import GbmlError
from gbml.io import load_checkpoint, remove_leftovers, replace_dir, save_checkpoint, write_json_atomic
from gbml.perf import autocast, configure_process, peak_memory_mb
from gbml.report.figures import run_learning_curve
from gbml.tracking import PARENT_TAG, RUN_KEY_TAG, StoreUnavailable, run_key, source_fingerprint


def curve_split_name(prepared_dir: Path, view: dict | None = None) -> str:
    """Validation classes if the split (under the run's data view) has any, else the test
    classes (Reptile's protocol has no validation split; its reference code also tracked test
    accuracy during training)."""
    return "val" if split_size(prepared_dir, "val", view) > 0 else "test"


def train_run(spec: RunSpec, cfg: dict[str, Any], prepared_dir: Path, run_dir: Path,
              tracker=None, tags: dict[str, Any] | None = None, progress: bool = True) -> dict:
    """Meta-train the run ``spec`` with resolved config ``cfg``; returns the run summary."""
    training = cfg["training"]
    seed_everything(spec.seed, int(training.get("threads", 0)))
    device = resolve_device(training.get("device", "auto"))
    configure_process(device)
    autocast(device, training.get("autocast", "none"))   # refuses an impossible precision before any work
    # Checked before any data is loaded: a reused run needs none.
    key = run_key(cfg, read_manifest(prepared_dir), source_fingerprint(), torch.__version__, device.type)
    tmp_dir = run_dir.with_name(run_dir.name + ".partial")
    if tracker and (reused := tracker.reuse(key, run_dir, exclude=("evaluation",))):
        shutil.rmtree(tmp_dir, ignore_errors=True)   # e.g. this very run, killed after it was logged
        print(f"{run_dir.name}: reused MLflow run {reused} (same configuration, data and code; "
              "GBML_REUSE_RUNS=0 trains again)")
        if PARENT_TAG in (tags or {}):   # it belongs to this sweep now, whichever sweep trained it
            tracker.set_tags(reused, {PARENT_TAG: tags[PARENT_TAG]})
        return json.loads((run_dir / "run.json").read_text())
    view = cfg.get("data_view")
    train_split = load_split(prepared_dir, "train", view)
    train_images = train_split.images.to(device)
    curve_name = curve_split_name(prepared_dir, view)
    curve = load_split(prepared_dir, curve_name, view).to(device)

    algorithm = build_algorithm(spec, cfg, tuple(train_images.shape[2:]), device)
    top_n = algorithm.ensemble_top_n
    if top_n and curve_name != "val":
        raise ConfigError(f"{spec.algorithm}.ensemble_top_n={top_n} selects checkpoints by validation "
                          f"accuracy, but prepare.{spec.dataset}.num_val is 0: give the split validation "
                          "classes, or set ensemble_top_n: 0 to evaluate the final checkpoint")
    sampler = training_stream(algorithm, train_images, spec, train_split.counts)

    reclaim_unfinished(run_dir, tmp_dir)
    resume = load_resume(tmp_dir, key)
    remove_leftovers(tmp_dir)   # a killed writer's temporaries: never logged, never published
    keeper = TopCheckpoints(top_n, tmp_dir / "ensemble") if top_n else None
    run_id = resume["mlflow_run_id"] if resume else None
    if resume:
        restore(resume, algorithm, sampler, keeper)
        print(f"{run_dir.name}: resuming at iteration {resume['progress']['iteration']} from {tmp_dir / RESUME}")
    if tracker and not (run_id and tracker.reopen(run_id)):
        run_id = tracker.start_run(spec.name, {**(tags or {}), RUN_KEY_TAG: key}, cfg)
    state = Progress(**resume["progress"]) if resume else Progress()
    save = Saver(tmp_dir, key, run_id, algorithm, sampler, keeper, int(training.get("checkpoint_every", 0)))
    try:
        history, seconds = meta_train(algorithm, sampler, curve, spec, training, device, progress, keeper,
                                      state, save)
        # The final state: from here until the run directory is in place, a kill (or a lost
        # store) costs no training: the same command resumes at the end and only finishes.
        save.write(state)
        if state.skipped:
            print(f"{run_dir.name}: {state.skipped} meta-steps with a non-finite loss were undone and skipped")
        if keeper:
            keeper.write_manifest()
        summary = finish_run(algorithm, cfg, spec, history, seconds, tmp_dir, run_id, curve_name, state.skipped)
        if tracker:
            log_or_keep(tracker, run_id, key, history, summary, save, state, resumed=resume is not None)
    except BaseException:
        if (tmp_dir / RESUME).is_file():
            print(f"{run_dir.name}: interrupted; {tmp_dir / RESUME} is kept: run the same command again to resume")
        else:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if tracker:
            try:
                tracker.finish(run_id, status="FAILED")
            except Exception as err:   # the store may be what failed; the original error matters
                print(f"{run_dir.name}: could not mark MLflow run {run_id} FAILED: {err}")
        raise
    replace_dir(tmp_dir, run_dir)
    (run_dir / RESUME).unlink()   # a kill before this line: see reclaim_unfinished
    return summary


def training_stream(algorithm, images: torch.Tensor, spec: RunSpec, counts: torch.Tensor | None):
    """What ``meta_step`` consumes: the algorithm's own stream if it has one (the joint-training
    baseline's globally labelled minibatches), else ``meta_batch`` episodes of its shape."""
    own = algorithm.train_sampler(images, counts, seed=spec.seed)
    if own is not None:
        return own
    shots, queries = algorithm.train_episode_shape
    return EpisodeSampler(images, spec.ways, shots, queries, seed=spec.seed, counts=counts)


def reclaim_unfinished(run_dir: Path, partial: Path) -> None:
    """A run directory that still holds ``resume.pt`` was swapped into place by a process killed
    before it removed that file: move it back to ``partial``, where resuming finishes it (same
    run key) or discards it (another configuration), like any interrupted run."""
    if (run_dir / RESUME).is_file() and not partial.exists():
        replace_dir(run_dir, partial)


class TopCheckpoints:
    """Keeps, on disk, the ``n`` checkpoints with the highest validation accuracy seen so far
    (MAML++'s protocol: its test score is the ensemble of the best per-epoch models). Ties go to
    the earlier checkpoint."""

    def __init__(self, n: int, directory: Path):
        self.n, self.directory = n, directory
        self.kept: list[tuple[float, int]] = []   # a min-heap of (accuracy, -step)
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, step: int) -> Path:
        return self.directory / f"step{step:07d}.pt"

    def offer(self, step: int, accuracy: float, state: dict) -> None:
        entry = (accuracy, -step)
        if len(self.kept) == self.n and entry <= self.kept[0]:
            return
        save_checkpoint(self.path(step), state)
        if len(self.kept) == self.n:
            heapq.heappop(self.kept)   # its file goes at the next prune: a resume.pt may still list it
        heapq.heappush(self.kept, entry)

    def prune(self) -> None:
        """Delete the checkpoints no longer kept."""
        kept = {self.path(-neg).name for _, neg in self.kept}
        for path in self.directory.glob("step*.pt"):
            if path.name not in kept:
                path.unlink()

    def write_manifest(self) -> None:
        self.prune()
        members = [{"step": -neg, "val_acc": acc, "file": self.path(-neg).name}
                   for acc, neg in sorted(self.kept, reverse=True)]
        write_json_atomic(self.directory / "members.json", members)


@dataclasses.dataclass
class Progress:
    """Where the outer loop stands: what a resume checkpoint holds besides the algorithm."""
    iteration: int = 0                                   # meta-iterations done
    history: list[dict] = dataclasses.field(default_factory=list)
    window: list[dict] = dataclasses.field(default_factory=list)   # metrics since the last history row
    seconds: float = 0.0                                 # training wall time so far
    skipped: int = 0                                     # meta-steps undone for a non-finite loss


RESUME = "resume.pt"


class Saver:
    """Writes ``resume.pt`` every ``every`` iterations (0: only at the end, ``write``), atomically."""

    def __init__(self, directory: Path, key: str, run_id: str | None, algorithm, sampler: EpisodeSampler,
                 keeper: "TopCheckpoints | None", every: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.key, self.run_id, self.every = directory, key, run_id, every
        self.algorithm, self.sampler, self.keeper = algorithm, sampler, keeper
        self.last: int | None = None   # the iteration of the newest resume.pt

    def __call__(self, state: Progress, final: bool) -> None:
        if not self.every or final or state.iteration % self.every:
            return
        self.write(state)

    def write(self, state: Progress) -> None:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint = {"key": self.key, "mlflow_run_id": self.run_id, "progress": dataclasses.asdict(state),
                      "algorithm": self.algorithm.state_dict(), "sampler": self.sampler.generator.get_state(),
                      "rng": rng, "keeper": list(self.keeper.kept) if self.keeper else []}
        try:
            save_checkpoint(self.directory / RESUME, checkpoint)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            kept = (f"the previous one (iteration {self.last}) is kept" if self.last
                    else "no earlier one exists")
            raise DiskFull(errno.ENOSPC, f"no space left on the device while writing the resume checkpoint "
                          f"{self.directory / RESUME} at iteration {state.iteration}; {kept}. Free space "
                          "(or raise training.checkpoint_every) and run the same command again") from err
        self.last = state.iteration
        if self.keeper:
            self.keeper.prune()   # only now may checkpoints this resume.pt no longer lists go


def load_resume(directory: Path, key: str) -> dict | None:
    """The resume checkpoint in ``directory`` (on the CPU: ``restore`` places each part) if it
    belongs to this run (same run key); else clear the directory (a half-started or foreign
    partial run) and return None."""
    path = directory / RESUME
    if path.is_file():
        state = load_checkpoint(path)
        if state.get("key") == key:
            return state
        print(f"{directory.name}: discarding {path}: it was written under another configuration, "
              "data or code (its run key differs); training starts over")
    shutil.rmtree(directory, ignore_errors=True)
    return None


def restore(checkpoint: dict, algorithm, sampler: EpisodeSampler, keeper: "TopCheckpoints | None") -> None:
    algorithm.load_state_dict(checkpoint["algorithm"])
    sampler.generator.set_state(checkpoint["sampler"].cpu())   # generator states are CPU tensors
    torch.set_rng_state(checkpoint["rng"]["cpu"].cpu())
    if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in checkpoint["rng"]["cuda"]])
    if keeper:
        keeper.kept = [tuple(entry) for entry in checkpoint["keeper"]]
        heapq.heapify(keeper.kept)


class NonFiniteLoss(PipelineError):
    """A meta-step produced a non-finite loss or state (``training.nonfinite: stop``)."""


class DiskFull(GbmlError, OSError):
    """No space left for a resume checkpoint; the message says which one is kept."""


def state_tensors(state) -> list[torch.Tensor]:
    """The floating-point tensors of a nested ``state_dict``: parameters, optimiser moments,
    MAML++'s learned inner rates, Reptile's inner Adam moments -- everything training updates.
    (0-d tensors are optimisers' step counters, kept on the CPU by PyTorch: left out.)"""
    if isinstance(state, dict):
        return [t for value in state.values() for t in state_tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in state_tensors(value)]
    return [state] if isinstance(state, torch.Tensor) and state.is_floating_point() and state.ndim else []


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """One multi-tensor reduction and one host sync (this runs every meta-iteration): a
    tensor's largest magnitude is NaN or infinite exactly when one of its values is."""
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, math.inf))).all())


def finite_step(algorithm, tasks, iteration: int, policy: str, state: Progress, save) -> dict | None:
    """``algorithm.meta_step`` under ``training.nonfinite``: a step whose loss or resulting
    state (``state_tensors``) is not finite stops training (``stop``; nothing after the last resume checkpoint
    is saved, so that checkpoint stays good) or is undone and counted (``skip``), returning None."""
    before = copy.deepcopy(algorithm.state_dict()) if policy == "skip" else None
    metrics = algorithm.meta_step(tasks, iteration)
    if math.isfinite(metrics["train_loss"]) and all_finite(state_tensors(algorithm.state_dict())):
        return metrics
    if policy == "skip":
        algorithm.load_state_dict(before)
        state.skipped += 1
        return None
    kept = (f"the last resume checkpoint ({save.directory / RESUME}, iteration {save.last}) is kept"
            if save and save.last else "no resume checkpoint was written yet")
    raise NonFiniteLoss(f"meta-iteration {iteration + 1}: the loss ({metrics['train_loss']}) or the updated "
                        f"state (parameters, optimiser moments, learned rates) is not finite; training stopped and {kept}. Lower the learning rates, "
                        "or set training.nonfinite: skip to undo and count such meta-steps")


def meta_train(algorithm, sampler: EpisodeSampler, curve: FewShotSplit, spec: RunSpec,
               training: dict, device: torch.device, progress: bool,
               keeper: TopCheckpoints | None = None, state: Progress | None = None,
               save=None) -> tuple[list[dict], float]:
    """The outer loop, from ``state`` (a fresh one by default). Returns the history rows and the
    training wall time (curve points excluded). ``save(state, final)`` runs after every iteration.

    Held-out curve points come every ``training.curve_every`` iterations, or once per epoch for
    algorithms that validate per epoch (``validate_every``: MAML++); ``keeper`` is offered each.
    """
    state = state or Progress()
    log_every = int(training.get("log_every", 50))
    curve_every = (algorithm.validate_every or int(training.get("curve_every", 0))
                   or algorithm.meta_iters)
    bar = tqdm(range(state.iteration, algorithm.meta_iters), desc=spec.name, disable=not progress,
               mininterval=2, initial=state.iteration, total=algorithm.meta_iters)
    precision = autocast(device, training.get("autocast", "none"))
    policy = training.get("nonfinite", "stop")
    for iteration in bar:
        start = time.perf_counter()
        with precision:
            metrics = finite_step(algorithm, sampler.sample_tasks(algorithm.meta_batch), iteration, policy,
                                  state, save)
        if metrics:
            state.window.append(metrics)
        state.seconds += time.perf_counter() - start
        step = state.iteration = iteration + 1
        on_curve = step % curve_every == 0 or step == algorithm.meta_iters
        if on_curve or step % log_every == 0:
            row = {"step": step, **{k: float(np.mean([m[k] for m in state.window])) for k in
                                    (state.window[0] if state.window else {})}}
            state.window = []
            if on_curve:
                with precision:
                    row["val_acc"] = curve_point(algorithm, curve, spec, training, device)
                # What else the algorithm tracks per curve point (MAML++: its learned inner rates).
                row.update(algorithm.curve_metrics())
                if keeper:
                    keeper.offer(step, row["val_acc"], algorithm.state_dict())
            state.history.append(row)
            if "train_acc" in row:
                bar.set_postfix(acc=f"{row['train_acc']:.3f}", refresh=False)
        if save:
            save(state, final=step == algorithm.meta_iters)
    return state.history, state.seconds


def curve_point(algorithm, curve: FewShotSplit, spec: RunSpec, training: dict, device) -> float:
    """Transductive accuracy on a fixed small set of held-out tasks (the learning curve)."""
    accs = evaluate(algorithm, curve.images, spec.ways, spec.shots, queries=1, counts=curve.counts,
                    num_tasks=int(training.get("curve_tasks", 20)), seed=int(training.get("curve_seed", 999)),
                    modes=("transductive",), device=device, progress=False)
    return float(accs["transductive"].mean())


def finish_run(algorithm, cfg: dict, spec: RunSpec, history: list[dict], seconds: float,
               out_dir: Path, run_id: str | None, curve_split: str, skipped: int = 0) -> dict:
    save_checkpoint(out_dir / "checkpoint.pt", algorithm.state_dict())
    iters, batch = algorithm.meta_iters, algorithm.meta_batch
    summary = {
        "run": dataclasses.asdict(spec), "mlflow_run_id": run_id, "meta_iters": iters,
        "train_seconds": round(seconds, 2), "tasks_per_second": round(iters * batch / max(seconds, 1e-9), 2),
        "final_train_acc": history[-1]["train_acc"], "final_val_acc": history[-1].get("val_acc", math.nan),
        "curve_split": curve_split, "engine": algorithm.engine, "autocast": cfg["training"].get("autocast", "none"),
        "peak_memory_mb": peak_memory_mb(next(iter(algorithm.params.values())).device),
        "nonfinite_skipped": skipped,
    }
    write_json_atomic(out_dir / "config.json", cfg)
    write_json_atomic(out_dir / "history.json", history)
    run_learning_curve(history, spec.name, out_dir / "learning_curve.png")
    write_json_atomic(out_dir / "run.json", summary)
    return summary


def log_or_keep(tracker, run_id: str, key: str, history: list[dict], summary: dict, save: "Saver",
                state: Progress, resumed: bool) -> None:
    """Log the finished run. If the store has gone away since training started, keep everything
    (the outputs and a resume checkpoint of the final state) so that the same command, run again
    once the store is back, logs the run without training again."""
    try:
        log_training(tracker, run_id, history, summary, save.directory, skip_logged=resumed)
        tracker.finish(run_id)
        tracker.delete_other_runs(key, keep=run_id)
    except Exception as err:   # the final resume checkpoint is already written
        raise StoreUnavailable(
            f"training finished ({state.iteration} meta-iterations), but logging to the MLflow store {tracker.uri} "
            f"failed ({type(err).__name__}: {str(err).splitlines()[0][:300]}). Nothing is lost: the outputs and a "
            f"final resume checkpoint are kept in {save.directory}; run the same command again once the store is "
            "reachable and it logs this run (same MLflow run, no duplicate steps) without training again") from err


def log_training(tracker, run_id: str, history: list[dict], summary: dict, out_dir: Path,
                 skip_logged: bool = False) -> None:
    rows = [(k, v, r["step"]) for r in history for k, v in r.items() if k != "step"]
    rows += [("train_seconds", summary["train_seconds"], 0), ("train_tasks_per_second", summary["tasks_per_second"], 0),
             ("train_peak_memory_mb", summary["peak_memory_mb"], 0),
             ("nonfinite_skipped", summary.get("nonfinite_skipped", 0), 0)]
    tracker.log_metrics(run_id, rows, skip_logged=skip_logged)
    tracker.set_tags(run_id, {"gbml.curve_split": summary["curve_split"], "gbml.engine": summary["engine"],
                              "gbml.autocast": summary.get("autocast", "none")})
    tracker.log_dir(run_id, out_dir, exclude=(RESUME,))   # the run directory: what Tracker.reuse restores
