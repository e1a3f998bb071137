"""Reptile (Nichol, Achiam, Schulman 2018, Algorithm 2 and Appendix A).

For each task of a meta-batch, train a copy of the initialisation phi for ``inner_iters``
minibatches of ``inner_batch`` examples drawn from ``train_shots`` examples per class, giving
W_i; then move phi towards the mean: ``phi += eps * mean_i(W_i - phi)``, with eps annealed
linearly from ``meta_step`` to ``meta_step_final`` over training.

As in the reference code, the inner optimiser is Adam with beta1 = 0 whose moments are *not*
reset between tasks: they persist across meta-iterations, and with ``inner_adam_state:
sequential`` (the reference) from each task of a meta-batch into the next. That chain makes the
tasks of a meta-batch depend on each other, so they run one after another, as stacks of one task
(as do Algorithm 1's, ``serial``, which moves phi after every task); ``parallel`` starts every
task of a meta-batch from the same carried state and then keeps the average of the tasks' states
(what running the tasks side by side means), and ``fresh`` gives every task new moments.
Evaluation adapts with a copy of the carried state ("carried", what the reference code does: it
backs the state up and restores it after each test task) or with a fresh one ("fresh"), and
never alters the training state.

The reference minimises TensorFlow's per-example cross-entropy vector, i.e. the loss *summed*
over the minibatch (``supervised_reptile/models.py``, ``minimize(self.loss)``). Adam is
nearly invariant to that scale, except that evaluation adapts with the carried moments of
10-example training minibatches on 5-example test minibatches: ``inner_loss: sum`` reproduces
it, ``mean`` (the default) averages. The inner Adam is ``gbml.algorithms.inner_adam``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gbml.algorithms.core import (CLASSIFICATION, Generators, Objective, Params, detached_leaves, mean_score,
                                  set_lr, stacked_minibatch_indices, summed_tasks_loss)
from gbml.algorithms.inner_adam import adam_step_, map_moments, new_adam_state, stacked_adam_state
from gbml.algorithms.learner import MetaLearner
from gbml.data.tasks import Episode, stack_tasks
from gbml.fields import check, choice, count, fraction, non_negative, rate


@dataclass(frozen=True)
class ReptileConfig:
    meta_iters: int = count(100000)
    meta_batch: int = count(5)
    meta_step: float = non_negative(1.0)   # 0: phi never moves (a control)
    meta_step_final: float = non_negative(0.0)
    train_shots: int = count(10, minimum=0)   # examples per class in training episodes; 0 = the setting's shots
    inner_optimizer: str = choice("adam", "sgd")
    inner_lr: float = rate(1e-3)
    adam_beta1: float = fraction(0.0)
    adam_beta2: float = fraction(0.999)
    adam_eps: float = rate(1e-8)
    inner_batch: int = count(10)
    inner_iters: int = count(5)
    inner_loss: str = choice("mean", "sum")   # over an inner minibatch; "sum": the reference code
    replacement: bool = False
    eval_inner_batch: int = count(5)
    eval_inner_iters: int = count(50)
    eval_adam_state: str = choice("carried", "fresh")
    # Across a meta-batch's tasks (see the module docstring).
    inner_adam_state: str = choice("sequential", "parallel", "fresh")
    serial: bool = False            # Algorithm 1: move phi after each task, not once per meta-batch
    # "sgd": phi += eps * mean(W - phi); "adam": phi - mean(W) as Adam's gradient, lr eps
    outer_optimizer: str = choice("sgd", "adam")

    def __post_init__(self):
        check(self)


class Reptile(MetaLearner):
    """The tasks of a meta-batch train side by side (per-task weights and Adam states, the model's
    ``forward_tasks``), or one after another as stacks of one where they chain (``engine``
    "serial": ``inner_adam_state: sequential``, or Algorithm 1)."""

    @staticmethod
    def episode_shape(cfg: ReptileConfig, shots: int) -> tuple[int, int]:
        """Meta-training episodes: ``train_shots`` examples per class, whatever the setting's shots
        (Nichol et al. train 5-shot with 10 or 15; 0 means the setting's, as the reference's
        ``train_shots or num_shots``), and no queries."""
        return cfg.train_shots or shots, 0

    def __init__(self, model: nn.Module, cfg: ReptileConfig, shots: int, seed: int,
                 objective: Objective = CLASSIFICATION):
        self.model, self.cfg, self.objective = model, cfg, objective
        self.engine = "serial" if cfg.serial or cfg.inner_adam_state == "sequential" else "batched"
        self.params: Params = dict(model.named_parameters())
        self.adam_state = new_adam_state(self.params)
        # Minibatch order inside the inner loop has its own stream, so it is checkpointable.
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.train_episode_shape = self.episode_shape(cfg, shots)
        self.meta_batch, self.meta_iters = cfg.meta_batch, cfg.meta_iters
        # The outer Adam's learning rate is set to the annealed eps before every step.
        self.outer = (torch.optim.Adam(self.params.values(), lr=cfg.meta_step)
                      if cfg.outer_optimizer == "adam" else None)

    def meta_step_size(self, iteration: int) -> float:
        """Linear annealing of the outer step (Appendix A), ``iteration`` counted from 0."""
        frac = iteration / self.cfg.meta_iters
        return frac * self.cfg.meta_step_final + (1 - frac) * self.cfg.meta_step

    def loss_scale(self, batch_size: int) -> int:
        """What the mean minibatch loss is multiplied by before differentiating: 1, or the
        minibatch size for the reference's summed loss."""
        return batch_size if self.cfg.inner_loss == "sum" else 1

    @torch.no_grad()
    def inner_update(self, weights: Params, grads: list[torch.Tensor], adam_state: dict) -> None:
        """One in-place inner-optimiser step on ``weights``."""
        lr = self.cfg.inner_lr
        if self.cfg.inner_optimizer == "sgd":
            torch._foreach_add_(list(weights.values()), grads, alpha=-lr)
            return
        adam_step_(list(weights.values()), grads, adam_state, list(weights), lr, self.cfg.adam_beta1,
                   self.cfg.adam_beta2, self.cfg.adam_eps)

    def inner_loop(self, params: Params, adam_state: dict, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int, iters: int, generator: Generators) -> tuple[Params, dict[str, float]]:
        """Train a copy of ``params`` per task of a stack (x, y: [tasks, n, ...]), side by side;
        ``adam_state`` (moments with a task axis) is updated in place. Minibatch indices are drawn
        task by task, from one stream or from each task's own."""
        n_tasks, n = y.shape[:2]
        idx = stacked_minibatch_indices(n_tasks, n, batch_size, iters, self.cfg.replacement, generator).to(y.device)
        rows = torch.arange(n_tasks, device=y.device).unsqueeze(1)
        weights = detached_leaves({k: p.expand(n_tasks, *p.shape) for k, p in params.items()})
        for step in range(iters):   # gathered per step, not all at once (core.stacked_minibatches, MAML's):
            xb, yb = x[rows, idx[:, step]], y[rows, idx[:, step]]   # 50 evaluation steps would hold 50x the images
            out = self.model.forward_tasks(weights, xb)
            value = summed_tasks_loss(self.objective, out, yb)
            grads = torch.autograd.grad(value * self.loss_scale(yb.shape[1]), list(weights.values()))
            self.inner_update(weights, grads, adam_state)
        # Reported on the last inner minibatch, before its update (as the reference code does).
        metrics = {"train_loss": value.item() / n_tasks,
                   f"train_{self.objective.metric}": mean_score(self.objective, out.detach(), yb)}
        return {k: w.detach() for k, w in weights.items()}, metrics

    def meta_step(self, tasks: Episode | list[Episode], iteration: int) -> dict[str, float]:
        tasks, eps, cfg = stack_tasks(tasks), self.meta_step_size(iteration), self.cfg
        n_tasks = len(tasks.support_y)
        stacks = [tasks.slice(i, i + 1) for i in range(n_tasks)] if self.engine == "serial" else [tasks]
        adapted, states, metrics = [], [], []
        for stack in stacks:
            state = stacked_adam_state(self.adam_state, len(stack.support_y), cfg.inner_adam_state)
            weights, m = self.inner_loop(self.params, state, stack.support_x, stack.support_y,
                                         cfg.inner_batch, cfg.inner_iters, self.generator)
            if cfg.inner_adam_state == "sequential":
                self.adam_state = map_moments(lambda v: v[0], state)   # the chain goes on from here
            states.append(state)
            metrics.append(m)
            if cfg.serial:
                self.outer_update({k: w.mean(0) for k, w in weights.items()}, eps)
            else:
                adapted.append(weights)
        if cfg.inner_adam_state == "parallel":   # the tasks' average, each ``inner_iters`` steps on
            self.adam_state = {"step": states[0]["step"], **{m: {k: torch.cat([s[m][k] for s in states]).mean(0)
                               for k in states[0][m]} for m in ("exp_avg", "exp_avg_sq")}}
        if not cfg.serial:
            self.outer_update({k: torch.cat([w[k] for w in adapted]).mean(0) for k in self.params}, eps)
        out = {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}
        return {**out, "meta_step_size": eps}

    def outer_update(self, target: Params, eps: float) -> None:
        """Move phi towards ``target``, the mean of the adapted weights: by eps * (target - phi),
        or by an Adam step whose gradient is phi - target."""
        with torch.no_grad():
            for name, phi in self.params.items():
                delta = target[name] - phi
                if self.outer is None:
                    phi.add_(delta, alpha=eps)
                else:
                    phi.grad = -delta
        if self.outer is not None:
            set_lr(self.outer, eps)
            self.outer.step()
            self.outer.zero_grad(set_to_none=True)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, generator: Generators) -> Params:
        """Test-time adaptation of a stack of tasks, from a copy of the carried Adam state or a
        fresh one (``eval_adam_state``); ``generator``: one stream, or one per task."""
        state = stacked_adam_state(self.adam_state, len(support_y), self.cfg.eval_adam_state)
        with torch.enable_grad():
            weights, _ = self.inner_loop(self.params, state, support_x, support_y,
                                         self.cfg.eval_inner_batch, self.cfg.eval_inner_iters, generator)
        return weights

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "adam_state": self.adam_state,
                 "generator": self.generator.get_state()}
        if self.outer is not None:
            state["outer"] = self.outer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` from any device: tensors go to the parameters' device, the
        (CPU) generator's state to the CPU."""
        self.model.load_state_dict(state["model"])
        device = next(iter(self.params.values())).device
        self.adam_state = map_moments(lambda v: v.to(device), state["adam_state"])
        self.generator.set_state(state["generator"].cpu())
        if self.outer is not None:
            self.outer.load_state_dict(state["outer"])
