"""The outer loop of meta-training: ``meta_batch`` tasks per meta-step (or the algorithm's own
stream), training metrics every ``training.log_every`` iterations, held-out curve points, the
non-finite policy, and a resume checkpoint offered after every iteration. ``gbml.train`` runs it
for one grid cell; the studies run it too."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from gbml.checkpoints import RESUME, Progress, TopCheckpoints
from gbml.config import PipelineError, RunSpec
from gbml.data.prepared import FewShotSplit
from gbml.data.tasks import EpisodeSampler
from gbml.evaluate import evaluate
from gbml.perf import autocast
from gbml.progress import progress as progress_bar


def training_stream(algorithm, images: torch.Tensor, spec: RunSpec, counts: torch.Tensor | None):
    """What ``meta_step`` consumes: the algorithm's own stream if it has one (the joint-training
    baseline's globally labelled minibatches), else ``meta_batch`` episodes of its shape."""
    own = algorithm.train_sampler(images, counts, seed=spec.seed)
    if own is not None:
        return own
    shots, queries = algorithm.train_episode_shape
    return EpisodeSampler(images, spec.ways, shots, queries, seed=spec.seed, counts=counts)


class NonFiniteLoss(PipelineError):
    """A meta-step produced a non-finite loss or state (``training.nonfinite: stop``)."""


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
    bar = progress_bar(range(state.iteration, algorithm.meta_iters), desc=spec.name, disable=not progress,
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
