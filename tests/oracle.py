"""The serial reference the engine is checked against.

Every task alone, one after another, through the model's plain ``forward`` (``functional_call``
on unbatched parameters) -- the per-task loop the engine (``forward_tasks`` over a stack of
tasks) replaced, kept here as the tests' oracle. Each function does to an algorithm what its
``meta_step`` or ``adapt`` does, reading only the algorithm's configuration and hooks (the
schedules MAML++ overrides); the computation is its own.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from gbml.algorithms.core import clamp_gradients_, minibatch_indices, sgd_step
from gbml.algorithms.inner_adam import map_moments, new_adam_state


def logits(algo, params, x, step: int = 0):
    """The model under one task's ``params`` at inner step ``step`` (MAML++: its batch-norm row)."""
    return functional_call(algo.model, params, (x,), algo.step_kwargs(step))


def step_loss(algo, step: int):
    return lambda params, x, y: algo.objective.loss(logits(algo, params, x, step), y)


# --- MAML, first-order MAML, ANIL, MAML++ ---

def maml_task_batches(algo, episode):
    """One task's inner (x, y) batches and the tail, minibatches drawn from ``algo.generator``."""
    cfg, (x, y) = algo.cfg, (episode.support_x, episode.support_y)
    shared = cfg.tail == "shared"
    if cfg.inner_batch:
        idx = minibatch_indices(len(y), cfg.inner_batch, cfg.inner_steps + shared, cfg.replacement, algo.generator)
        batches = [(x[i], y[i]) for i in idx]
    else:
        batches = [(x, y)] * (cfg.inner_steps + shared)
    if shared:
        return batches[:-1], batches[-1]
    return batches, (episode.query_x, episode.query_y)


def maml_meta_step(algo, episodes, iteration: int) -> dict[str, float]:
    """MAML's outer update, backpropagating one task's graph at a time."""
    lr = algo.meta_lr_at(iteration)
    if lr is not None:
        for group in algo.optimizer.param_groups:
            group["lr"] = lr
    algo.optimizer.zero_grad(set_to_none=True)
    epoch, total_loss, total_score = algo.epoch(iteration), 0.0, 0.0
    for episode in episodes:
        batches, (tail_x, tail_y) = maml_task_batches(algo, episode)
        params, loss = algo.params, 0.0
        for step, ((x, y), weight) in enumerate(zip(batches, algo.step_weights(epoch))):
            params = sgd_step(step_loss(algo, step), params, x, y, algo.step_rates(step), algo.second_order(epoch),
                              algo.inner_names)
            if weight:
                out = logits(algo, params, tail_x, step)
                loss = loss + weight * algo.objective.loss(out, tail_y)
        (loss / len(episodes)).backward()
        total_loss += loss.item()
        total_score += algo.objective.score(out, tail_y)
    clamp_gradients_(algo.params.values(), algo.cfg.meta_grad_clip)
    algo.optimizer.step()
    metrics = {"train_loss": total_loss / len(episodes),
               f"train_{algo.objective.metric}": total_score / len(episodes)}
    return metrics if lr is None else {**metrics, "meta_lr": lr}


def maml_adapt(algo, x, y):
    """``eval_inner_steps`` full-batch SGD steps on one task's support set."""
    with torch.enable_grad():
        params = algo.params
        for step in range(algo.cfg.eval_inner_steps):
            params = sgd_step(step_loss(algo, step), params, x, y, algo.step_rates(step), False, algo.inner_names)
    return {name: p.detach() for name, p in params.items()}


def maml_predict(algo):
    return lambda params, x: logits(algo, params, x, algo.cfg.eval_inner_steps - 1)


# --- Reptile ---

def reptile_inner_loop(algo, state: dict, x, y, batch_size: int, iters: int, generator):
    """Train a copy of phi on one task; ``state`` (unbatched Adam moments) is updated in place."""
    weights = {name: p.detach().clone().requires_grad_(True) for name, p in algo.params.items()}
    for idx in minibatch_indices(len(y), batch_size, iters, algo.cfg.replacement, generator):
        out = functional_call(algo.model, weights, (x[idx],))
        value = algo.objective.loss(out, y[idx])
        grads = torch.autograd.grad(value * algo.loss_scale(len(idx)), list(weights.values()))
        algo.inner_update(weights, grads, state)
    metrics = {"train_loss": value.item(), f"train_{algo.objective.metric}": algo.objective.score(out, y[idx])}
    return {name: w.detach() for name, w in weights.items()}, metrics


def reptile_meta_step(algo, episodes, iteration: int) -> dict[str, float]:
    """Reptile's outer update, task after task: one Adam state passed along (sequential), copies
    of the carried one averaged afterwards (parallel) or new ones (fresh); phi moved after every
    task (Algorithm 1, ``serial``) or once towards the mean of the adapted weights."""
    cfg, eps = algo.cfg, algo.meta_step_size(iteration)
    if cfg.inner_adam_state == "sequential":
        states = [algo.adam_state] * len(episodes)
    elif cfg.inner_adam_state == "parallel":
        states = [map_moments(torch.clone, algo.adam_state) for _ in episodes]
    else:
        states = [new_adam_state(algo.params) for _ in episodes]
    adapted, metrics = [], []
    for episode, state in zip(episodes, states):
        weights, m = reptile_inner_loop(algo, state, episode.support_x, episode.support_y, cfg.inner_batch,
                                        cfg.inner_iters, algo.generator)
        metrics.append(m)
        if cfg.serial:
            algo.outer_update(weights, eps)
        else:
            adapted.append(weights)
    if cfg.inner_adam_state == "parallel":
        algo.adam_state = {"step": states[0]["step"], **{m: {k: torch.stack([s[m][k] for s in states]).mean(0)
                           for k in states[0][m]} for m in ("exp_avg", "exp_avg_sq")}}
    if not cfg.serial:
        algo.outer_update({k: torch.stack([w[k] for w in adapted]).mean(0) for k in algo.params}, eps)
    return {**{k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}, "meta_step_size": eps}


def reptile_adapt(algo, x, y, generator):
    state = (map_moments(torch.clone, algo.adam_state) if algo.cfg.eval_adam_state == "carried"
             else new_adam_state(algo.params))
    with torch.enable_grad():
        weights, _ = reptile_inner_loop(algo, state, x, y, algo.cfg.eval_inner_batch, algo.cfg.eval_inner_iters,
                                        generator)
    return weights


def reptile_predict(algo):
    return lambda params, x: functional_call(algo.model, params, (x,))
