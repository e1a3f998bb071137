"""Meta-training one grid cell: the run around the outer loop (``gbml.meta_training``) and its
checkpoints (``gbml.checkpoints``).

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

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from gbml.checkpoints import RESUME, Progress, Saver, TopCheckpoints, load_resume, restore
from gbml.config import ConfigError, RunSpec
from gbml.data.prepared import load_split, read_manifest, split_size
from gbml.factory import build_algorithm, resolve_device, seed_everything
from gbml.io import remove_leftovers, replace_dir, save_checkpoint, write_json_atomic
from gbml.lineage import split_inputs
from gbml.meta_training import meta_train, training_stream
from gbml.model_registry import register
from gbml.perf import autocast, configure_process, peak_memory_mb
from gbml.report.figures import run_learning_curve
from gbml.run_keys import RUN_KEY_TAG, run_key, source_fingerprint
from gbml.system_metrics import system_metrics
from gbml.tracking import PARENT_TAG
from gbml.tracking_store import StoreUnavailable


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
    if tracker:
        tracker.log_inputs(run_id, split_inputs(prepared_dir, ("train", curve_name), view))
    state = Progress(**resume["progress"]) if resume else Progress()
    save = Saver(tmp_dir, key, run_id, algorithm, sampler, keeper, int(training.get("checkpoint_every", 0)))
    try:
        with system_metrics(tracker, run_id):
            history, seconds = meta_train(algorithm, sampler, curve, spec, training, device, progress, keeper,
                                          state, save)
        # The final state: from here until the run directory is in place, a kill (or a lost
        # store) costs no training: the same command resumes at the end and only finishes.
        save.write(state)
        if state.skipped:
            print(f"{run_dir.name}: {state.skipped} meta-steps with a non-finite loss were undone and skipped")
        if keeper:
            keeper.write_manifest()
        summary = finish_run(algorithm, cfg, spec, history, seconds, tmp_dir, run_id, curve_name, state.skipped,
                             image_shape=tuple(train_images.shape[2:]))
        if tracker:
            log_or_keep(tracker, run_id, key, cfg, history, summary, save, state, resumed=resume is not None)
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


def reclaim_unfinished(run_dir: Path, partial: Path) -> None:
    """A run directory that still holds ``resume.pt`` was swapped into place by a process killed
    before it removed that file: move it back to ``partial``, where resuming finishes it (same
    run key) or discards it (another configuration), like any interrupted run."""
    if (run_dir / RESUME).is_file() and not partial.exists():
        replace_dir(run_dir, partial)


def finish_run(algorithm, cfg: dict, spec: RunSpec, history: list[dict], seconds: float,
               out_dir: Path, run_id: str | None, curve_split: str, skipped: int = 0,
               image_shape: tuple[int, ...] = ()) -> dict:
    save_checkpoint(out_dir / "checkpoint.pt", algorithm.state_dict())
    iters, batch = algorithm.meta_iters, algorithm.meta_batch
    summary = {
        "run": dataclasses.asdict(spec), "mlflow_run_id": run_id, "meta_iters": iters,
        "train_seconds": round(seconds, 2), "tasks_per_second": round(iters * batch / max(seconds, 1e-9), 2),
        "final_train_acc": history[-1]["train_acc"], "final_val_acc": history[-1].get("val_acc", math.nan),
        "curve_split": curve_split, "engine": algorithm.engine, "autocast": cfg["training"].get("autocast", "none"),
        "peak_memory_mb": peak_memory_mb(next(iter(algorithm.params.values())).device),
        "nonfinite_skipped": skipped, "image_shape": list(image_shape),   # what gbml.load_model builds
    }
    write_json_atomic(out_dir / "config.json", cfg)
    write_json_atomic(out_dir / "history.json", history)
    run_learning_curve(history, spec.name, out_dir / "learning_curve.png")
    write_json_atomic(out_dir / "run.json", summary)
    return summary


def log_or_keep(tracker, run_id: str, key: str, cfg: dict, history: list[dict], summary: dict, save: Saver,
                state: Progress, resumed: bool) -> None:
    """Log the finished run. If the store has gone away since training started, keep everything
    (the outputs and a resume checkpoint of the final state) so that the same command, run again
    once the store is back, logs the run without training again. A logged run's checkpoint is
    registered in the Model Registry (``gbml.model_registry``)."""
    try:
        log_training(tracker, run_id, history, summary, save.directory, skip_logged=resumed)
        tracker.finish(run_id)
        tracker.delete_other_runs(key, keep=run_id)
        register(tracker, run_id, cfg, summary)
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
