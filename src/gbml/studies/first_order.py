"""The first-order family of Nichol et al. (2018) as their section 6 studies train it: a task's
inner loop takes k plain SGD steps, phi_{i+1} = phi_i - alpha g_i (g_i the gradient of minibatch i
at phi_i), and the meta-update is phi <- phi - eps * alpha * sum_{i in S} g_i over a chosen set S
of those gradients, eps annealed linearly (the reference's interpolation, one task per
meta-batch): S = {1..k} is Reptile (phi - W_k = alpha * sum g_i), S = {k} first-order MAML (the
reference's ``FOML``: the last step's difference), S = {1} joint training.

A study's config supplies the fields these functions read (``GradientCombinationsConfig``,
``MinibatchOverlapConfig``): meta_iters, meta_step, meta_step_final, inner_lr, inner_loss,
eval_every, and for scoring shots, inner_batch, eval_inner_batch, eval_inner_iters.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gbml.algorithms.core import LossFn, Params
from gbml.io import write_json_atomic

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def inner_gradients(loss: LossFn, params: Params, batches: Batches, lr: float, summed: bool = False) -> list[Params]:
    """g_1..g_k of plain SGD on ``batches`` from ``params``: g_i = grad L_i(phi_i) with
    phi_{i+1} = phi_i - lr * g_i; ``loss`` is a minibatch mean, times the minibatch's size when
    ``summed`` (the reference's TensorFlow loss vector). Detached: first-order by construction."""
    phi = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    grads = []
    for x, y in batches:
        scale = len(y) if summed else 1
        g = {n: scale * d for n, d in zip(phi, torch.autograd.grad(loss(phi, x, y), list(phi.values())))}
        grads.append(g)
        phi = {name: (p - lr * g[name]).detach().requires_grad_(True) for name, p in phi.items()}
    return grads


@torch.no_grad()
def apply_update(params: Params, grads: list[Params], indices: list[int], step: float) -> None:
    """phi <- phi - step * sum_{i in indices} g_i (1-based), in place (``step`` = eps * alpha)."""
    for name, p in params.items():
        p.sub_(step * sum(grads[i - 1][name] for i in indices))


def meta_step_size(cfg, iteration: int) -> float:
    """eps at ``iteration`` (from 0): linear from ``meta_step`` to ``meta_step_final``."""
    frac = iteration / cfg.meta_iters
    return frac * cfg.meta_step_final + (1 - frac) * cfg.meta_step


def meta_train(model, cfg, train, batches_of: Callable, update: Callable[[int], list[int]],
               curve: Callable[[], np.ndarray], generator: torch.Generator, desc: str,
               progress: bool = False) -> list[tuple[int, np.ndarray]]:
    """Meta-train ``model`` in place on ``train``'s tasks (an ``EpisodeSampler`` without queries):
    per iteration one task, its inner minibatches ``batches_of(task, generator)``, their
    gradients, and the update over the gradients ``update(k)`` names (k = how many). ``curve()``
    scores the model at 0, every ``cfg.eval_every`` iterations and at the end: [(iteration, scores)]."""
    from gbml.progress import progress as progress_bar

    from gbml.algorithms.core import make_loss

    loss, params = make_loss(model), dict(model.named_parameters())
    points = [(0, curve())]
    for iteration in progress_bar(range(cfg.meta_iters), desc=desc, disable=not progress, mininterval=2):
        batches = batches_of(train.sample(), generator)
        grads = inner_gradients(loss, params, batches, cfg.inner_lr, summed=cfg.inner_loss == "sum")
        apply_update(params, grads, update(len(grads)), meta_step_size(cfg, iteration) * cfg.inner_lr)
        done = iteration + 1
        if done % cfg.eval_every == 0 or done == cfg.meta_iters:
            points.append((done, curve()))
    return points


def evaluator(model, cfg, seed: int):
    """A Reptile learner around ``model`` that adapts as the reference evaluates (plain SGD at
    ``inner_lr``, ``eval_inner_iters`` minibatches of ``eval_inner_batch``, the loss as in
    training); only its ``adapt`` is used, by ``gbml.evaluate.evaluate``. Its minibatches cycle
    through the support set (the reference evaluates with the training run's ``--replacement``; with
    eval_inner_batch = ways x shots, every study's setting, both give the whole set each step)."""
    from gbml.algorithms.reptile import Reptile, ReptileConfig

    reptile = ReptileConfig(meta_iters=cfg.meta_iters, meta_batch=1, inner_optimizer="sgd", inner_lr=cfg.inner_lr,
                            inner_loss=cfg.inner_loss, inner_batch=cfg.inner_batch,
                            eval_inner_batch=cfg.eval_inner_batch, eval_inner_iters=cfg.eval_inner_iters,
                            eval_adam_state="fresh", inner_adam_state="fresh")
    return Reptile(model, reptile, cfg.shots, seed)


def train_and_score(params: dict, cfg, workspace, seed: int, train_shots: int, batches_of: Callable,
                    update: Callable[[int], list[int]], desc: str) -> list[dict]:
    """One unit of a study: a network built as ``model.omniglot`` says, meta-trained from ``seed``
    on Omniglot's training split (tasks of ``train_shots`` per class), scored on ``cfg.eval_tasks``
    test tasks along the way. Rows: iteration, task, accuracy."""
    from gbml.config import section
    from gbml.data.prepared import load_split
    from gbml.data.tasks import EpisodeSampler
    from gbml.evaluate import evaluate
    from gbml.factory import build_model, resolve_device, seed_everything

    training = section(params, "training")
    seed_everything(seed, int(training.get("threads", 0)))
    device = resolve_device(training.get("device", "auto"))
    train = load_split(workspace.prepared("omniglot"), "train")   # rotations as prepared (Nichol et al. too)
    test = load_split(workspace.prepared("omniglot"), "test")
    model = build_model(dict(section(params, "model", "omniglot")), cfg.ways, tuple(train.images.shape[2:])).to(device)
    sampler = EpisodeSampler(train.images.to(device), cfg.ways, train_shots, 0, seed=seed)
    scorer, test_images = evaluator(model, cfg, seed), test.images.to(device)

    def curve() -> np.ndarray:
        return evaluate(scorer, test_images, cfg.ways, cfg.shots, cfg.eval_queries, cfg.eval_tasks, cfg.eval_seed,
                        modes=(cfg.eval_mode,), progress=False)[cfg.eval_mode]

    generator = torch.Generator().manual_seed(seed + 7919)   # minibatch order: its own stream
    points = meta_train(model, cfg, sampler, batches_of, update, curve, generator, desc, progress=True)
    return [{"iteration": it, "task": t, "accuracy": a} for it, accs in points for t, a in enumerate(accs)]


def not_run_summary(params: dict, cfg, out: Path, outputs) -> dict | None:
    """A training study left out of this profile (no seeds): ``out`` holds metrics.json alone,
    saying so (the report and the summary stages read it), and the metrics are returned; with
    seeds, None."""
    if cfg.seeds:
        return None
    for name in outputs:
        (out / name).unlink(missing_ok=True)
    metrics = {"config": dataclasses.asdict(cfg), "ran": False, "profile": params.get("profile", "unnamed")}
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
