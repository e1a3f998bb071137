"""The functional core every algorithm is built on.

Parameters are plain ``{name: tensor}`` dicts, so an adapted set of parameters is just another
dict and the outer loop can differentiate through the inner loop (MAML) or ignore it
(first-order MAML, Reptile) without touching the model.

One engine. Every algorithm works on a *stack* of tasks: episodes with a leading task axis
``T`` and parameters with the same axis, run by the model's ``forward_tasks`` (each layer one
grouped computation over per-task parameters, plain ``torch.autograd``). A single task is
``T = 1``; tasks that must run one after another (Reptile's Adam state chained from task to
task) are stacks of one, in order. The per-task loop over ``functional_call`` that this replaced
lives on only as the tests' oracle (``tests/oracle.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


Params = dict[str, torch.Tensor]
# loss(params, x, y) -> scalar; predict(params, x) -> logits
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]
# What drives the sampling inside a stack of tasks' inner loops: one stream, or one per task.
Generators = torch.Generator | list[torch.Generator]


def make_predict(model: nn.Module) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    def predict(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (x,))
    return predict


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).float().mean().item()


@dataclass(frozen=True)
class Objective:
    """What a task asks of the model: the loss the loops minimise and the score they report
    (logged as ``train_<metric>``)."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: str
    score: Callable[[torch.Tensor, torch.Tensor], float]


# Few-shot classification (every image benchmark here) and the sine-wave regression study.
CLASSIFICATION = Objective(F.cross_entropy, "acc", accuracy)
REGRESSION = Objective(F.mse_loss, "mse", lambda out, y: F.mse_loss(out, y).item())


def make_loss(model: nn.Module, objective: Objective = CLASSIFICATION) -> LossFn:
    """The objective's loss of the model's output under ``params``."""
    predict = make_predict(model)

    def loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return objective.loss(predict(params, x), y)
    return loss


def sgd_step(loss: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor,
             lr: float | Params, create_graph: bool, names: list[str] | None = None) -> Params:
    """One inner-loop SGD step, ``theta' = theta - lr * grad L(theta)``, on the parameters
    ``names`` (default: all; ANIL adapts only the head). The others pass through unchanged.

    With ``create_graph`` the step stays differentiable (second-order MAML); without it the
    gradient is a constant, so ``d theta'/d theta = I`` and backpropagating through the result
    yields the first-order approximation.
    """
    names = list(params) if names is None else names
    value = loss(params, x, y)
    grads = torch.autograd.grad(value, [params[n] for n in names], create_graph=create_graph)
    rates = lr if isinstance(lr, dict) else {name: lr for name in names}
    return {**params, **{n: params[n] - rates[n] * g for n, g in zip(names, grads)}}


def expand_tasks(params: Params, n_tasks: int) -> Params:
    """``params`` for each of ``n_tasks`` tasks, as views with a leading task axis: the batched
    engine's per-task parameters before adaptation (gradients flow back to ``params`` summed over
    tasks)."""
    return {name: p.expand(n_tasks, *p.shape) for name, p in params.items()}


def tasks_loss(objective: Objective, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean over tasks of each task's loss, for outputs and targets with a leading task
    axis and the same number of examples in every task."""
    return objective.loss(out.flatten(0, 1), target.flatten(0, 1))


def summed_tasks_loss(objective: Objective, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The *sum* over tasks of each task's loss: what the engine's inner loops differentiate. Tasks
    do not interact, so its gradient with respect to task ``t``'s parameters is exactly the gradient
    of task ``t``'s loss: one ``torch.autograd.grad`` gives every task its own inner step."""
    return tasks_loss(objective, out, target) * len(out)


def make_tasks_loss(model: nn.Module, objective: Objective = CLASSIFICATION) -> LossFn:
    """``summed_tasks_loss`` of the model under per-task parameters (``model.forward_tasks``),
    as a ``LossFn`` for ``sgd_step``."""
    def loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return summed_tasks_loss(objective, model.forward_tasks(params, x), y)
    return loss


def minibatch_indices(n: int, batch_size: int, num_batches: int, replacement: bool,
                      generator: torch.Generator) -> list[torch.Tensor]:
    """Index minibatches over ``n`` examples, as the reference ``_mini_batches``: with
    replacement each batch is an independent draw; without, the examples are cycled through in
    fresh random orders and a batch may straddle two passes."""
    if replacement:
        return [torch.randperm(n, generator=generator)[:batch_size] for _ in range(num_batches)]
    needed = batch_size * num_batches
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(needed / n))])
    return list(order[:needed].split(batch_size))


def stacked_minibatch_indices(n_tasks: int, n: int, batch_size: int, num_batches: int, replacement: bool,
                              generator: Generators) -> torch.Tensor:
    """``minibatch_indices`` for each of ``n_tasks`` tasks, shape [tasks, num_batches, batch_size]:
    from one generator, task after task (training: the order the per-task loop drew them in), or
    from each task's own generator (evaluation's indexed tasks)."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator] * n_tasks
    return torch.stack([torch.stack(minibatch_indices(n, batch_size, num_batches, replacement, g))
                        for g in generators])


def stacked_minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int, num_batches: int, replacement: bool,
                        generator: Generators) -> tuple[torch.Tensor, torch.Tensor]:
    """A stack of tasks' examples (x, y: [tasks, n, ...]) as ``num_batches`` minibatches per task,
    [tasks, num_batches, batch_size, ...], indices as ``stacked_minibatch_indices``; with
    ``batch_size`` 0 every batch is the whole set (a view, no copies)."""
    if not batch_size:
        return (x.unsqueeze(1).expand(-1, num_batches, *x.shape[1:]),
                y.unsqueeze(1).expand(-1, num_batches, *y.shape[1:]))
    n_tasks, n = y.shape[:2]
    idx = stacked_minibatch_indices(n_tasks, n, batch_size, num_batches, replacement, generator).to(y.device)
    rows = torch.arange(n_tasks, device=idx.device).view(-1, 1, 1)
    return x[rows, idx], y[rows, idx]


def mean_score(objective: Objective, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The objective's score averaged over tasks (outputs and targets with a task axis)."""
    return sum(objective.score(o, t) for o, t in zip(outputs, targets)) / len(outputs)


def detached_leaves(params: Params) -> Params:
    """Copies of ``params`` that are fresh autograd leaves (for inner loops that never
    backpropagate into the initialisation, like Reptile's)."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}


def set_lr(optimizer: torch.optim.Optimizer, lr: float | None) -> None:
    """Set every parameter group's learning rate to ``lr`` (None: leave it)."""
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


def clamp_gradients_(params, bound: float) -> None:
    """Clamp every element of the parameters' ``.grad`` to [-bound, bound] (0: leave them): the
    meta-gradient clipping of Finn et al.'s and Antoniou et al.'s Mini-ImageNet code."""
    if bound:
        for p in params:
            if p.grad is not None:
                p.grad.clamp_(-bound, bound)
