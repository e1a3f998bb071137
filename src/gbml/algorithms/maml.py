"""MAML and first-order MAML (Finn, Abbeel, Levine 2017, Algorithm 2).

Inner loop: ``inner_steps`` SGD steps on the support set from the shared initialisation theta.
Outer loop: Adam on the mean post-adaptation loss on the *tail* over a meta-batch of tasks,
differentiating through the inner loop (second order) unless ``first_order`` is set, in which
case the gradient at the adapted parameters is applied to theta (section 5.2, "first-order
approximation").

Minibatching (Nichol et al. 2018, section 6.3). With ``inner_batch`` > 0 each inner step uses a
minibatch of the support set, drawn by cycling through it in fresh random orders or, with
``replacement``, by independent draws. The tail -- the batch the outer loss is computed on --
is either *separate* (the query set: samples the inner loop never saw; Finn et al.'s setup) or
*shared* (one more minibatch of the support samples, continuing the same draw). In Nichol's
terms ``inner_iters = inner_steps + 1`` and ``tail_shots = train_queries``.

Two switches reproduce Finn et al.'s code (cbfinn/maml): ``inner_bn: false`` leaves batch norm's
parameters out of the inner loop (its ``batch_norm`` variables are not in the ``weights`` the
fast update touches, ``maml.py``), and ``meta_grad_clip`` clamps each meta-gradient element
before Adam (its Mini-ImageNet runs: ``clip_by_value(grad, -10, 10)``). Its inner loss is
summed over the support set and divided by K (``utils.py`` ``xent``): an SGD step at rate a on
that loss is a step at N * a on the mean loss used here, so the paper profile's ``inner_lr``
is N * ``update_lr``. The outer loss is scaled alike (by N, or 15N/K on Mini-ImageNet); Adam
ignores the scale, the clamp does not: clamping at 10 a gradient s times larger is clamping
this one at 10 / s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gbml.algorithms.core import (CLASSIFICATION, Generators, Objective, Params, clamp_gradients_, expand_tasks,
                                  mean_score, set_lr, sgd_step, stacked_minibatches, summed_tasks_loss, tasks_loss)
from gbml.algorithms.learner import MetaLearner
from gbml.data.tasks import Episode, stack_tasks
from gbml.fields import check, choice, count, non_negative, rate

TAILS = ("separate", "shared")


@dataclass(frozen=True)
class MAMLConfig:
    meta_iters: int = count(60000)
    meta_batch: int = count(32)
    meta_lr: float = rate(1e-3)
    inner_steps: int = count(1)
    inner_lr: float = rate(0.4)
    first_order: bool = False
    inner_batch: int = count(0, minimum=0)    # examples per inner step; 0 = the whole support set (Finn et al.)
    replacement: bool = False   # inner minibatches: independent draws instead of cycling
    tail: str = choice("separate", *TAILS)    # outer loss on the query set ("separate") or on support samples ("shared")
    train_shots: int = count(0, minimum=0)    # support examples per class when meta-training; 0 = the setting's shots
    train_queries: int = count(1, minimum=0)  # query examples per class in meta-training episodes (0: shared tail)
    eval_inner_steps: int = count(3)          # Finn et al.: 3 steps at test time for Omniglot 5-way
    inner_bn: bool = True                       # adapt batch norm's parameters in the inner loop
    meta_grad_clip: float = non_negative(0.0)   # clamp meta-gradient elements to [-c, c]; 0: off

    def __post_init__(self):
        check(self)
        if self.tail == "separate" and self.train_queries < 1:
            raise ValueError("tail 'separate' computes the outer loss on queries: train_queries must be >= 1")


class MAML(MetaLearner):
    """The tasks of a meta-batch run side by side, each under its own parameters (the model's
    ``forward_tasks``), and the mean outer loss is backpropagated once.

    The hooks below are constant here; a variant overrides the ones it changes (MAML++ all five:
    the inner rate and the model's arguments per inner step, the query losses' weights and the
    derivative order per epoch, the outer rate per iteration)."""

    @staticmethod
    def episode_shape(cfg: MAMLConfig, shots: int) -> tuple[int, int]:
        """Support and query examples per class of a training episode (a shared tail needs no queries)."""
        return cfg.train_shots or shots, cfg.train_queries if cfg.tail == "separate" else 0

    def __init__(self, model: nn.Module, cfg: MAMLConfig, shots: int, seed: int = 0,
                 objective: Objective = CLASSIFICATION):
        self.model, self.cfg, self.objective = model, cfg, objective
        self.params: Params = dict(model.named_parameters())
        self.inner_names = self.adapted_parameter_names()
        self.optimizer = torch.optim.Adam(self.params.values(), lr=cfg.meta_lr)
        self.train_episode_shape = self.episode_shape(cfg, shots)
        self.meta_batch, self.meta_iters = cfg.meta_batch, cfg.meta_iters
        # Inner-minibatch order has its own stream, so it is checkpointable.
        self.generator = torch.Generator().manual_seed(seed + 7919)

    def adapted_parameter_names(self) -> list[str]:
        """The parameters the inner loop adapts: all of them, or all but batch norm's with
        ``inner_bn`` off (ANIL overrides this)."""
        return [n for n in self.params if self.cfg.inner_bn or ".norm." not in n]

    # --- the hooks ---

    def step_rates(self, step: int) -> float | Params:
        """Inner step ``step``'s learning rate (one for all tensors, or one per tensor)."""
        return self.cfg.inner_lr

    def step_kwargs(self, step: int) -> dict:
        """What the model is called with at inner step ``step``, besides the inputs."""
        return {}

    def epoch(self, iteration: int) -> int:
        """The epoch of ``iteration``, which the per-epoch hooks read (MAML has one)."""
        return 0

    def step_weights(self, epoch: int) -> list[float]:
        """The weight of the query loss after each inner step in the outer loss: the last alone."""
        return [0.0] * (self.cfg.inner_steps - 1) + [1.0]

    def second_order(self, epoch: int) -> bool:
        """Whether the meta-gradient differentiates through the inner loop."""
        return not self.cfg.first_order

    def meta_lr_at(self, iteration: int) -> float | None:
        """The outer Adam's rate at ``iteration``; None leaves it at ``meta_lr`` (and unlogged)."""
        return None

    # --- the inner loop, on a stack of tasks ---

    def logits(self, params: Params, x: torch.Tensor, step: int) -> torch.Tensor:
        """The model under per-task ``params`` at inner step ``step``."""
        return self.model.forward_tasks(params, x, **self.step_kwargs(step))

    def inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int,
                   create_graph: bool) -> Params:
        """Inner step ``step`` of every task: SGD on the support loss summed over tasks, so that
        each task's parameters get their own task's gradient."""
        def loss(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return summed_tasks_loss(self.objective, self.logits(p, x, step), y)
        return sgd_step(loss, params, x, y, self.step_rates(step), create_graph, self.inner_names)

    def task_batches(self, tasks: Episode) -> tuple[torch.Tensor, ...]:
        """Inner batches [tasks, steps, b, ...] (minibatches drawn task by task from one stream) and
        the tail the outer loss uses, [tasks, n, ...]."""
        steps = self.cfg.inner_steps + (self.cfg.tail == "shared")
        xs, ys = stacked_minibatches(tasks.support_x, tasks.support_y, self.cfg.inner_batch, steps,
                                     self.cfg.replacement, self.generator)
        if self.cfg.tail == "shared":
            return xs[:, :-1], ys[:, :-1], xs[:, -1], ys[:, -1]
        return xs, ys, tasks.query_x, tasks.query_y

    def task_loss(self, tasks: Episode, epoch: int):
        """The outer loss (the mean over tasks of the query losses after the inner steps, weighted by
        ``step_weights``), the tail's logits after the last weighted step, and its targets."""
        xs, ys, tail_x, tail_y = self.task_batches(tasks)
        params = expand_tasks(self.params, len(tail_y))
        create_graph, loss = self.second_order(epoch), None
        for step, (x, y, weight) in enumerate(zip(xs.unbind(1), ys.unbind(1), self.step_weights(epoch))):
            params = self.inner_step(params, x, y, step, create_graph)
            if weight:
                out = self.logits(params, tail_x, step)
                term = weight * tasks_loss(self.objective, out, tail_y)   # x 1.0 is exact
                loss = term if loss is None else loss + term
        return loss, out, tail_y

    # --- the outer loop ---

    def accumulate_meta_gradient(self, tasks: Episode | list[Episode], epoch: int = 0) -> dict[str, float]:
        """Add the meta-gradient of the mean outer loss over ``tasks`` to ``.grad``."""
        loss, out, tail_y = self.task_loss(stack_tasks(tasks), epoch)
        loss.backward()
        return {"train_loss": loss.item(),
                f"train_{self.objective.metric}": mean_score(self.objective, out.detach(), tail_y)}

    def meta_step(self, tasks: Episode | list[Episode], iteration: int) -> dict[str, float]:
        lr = self.meta_lr_at(iteration)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.accumulate_meta_gradient(tasks, self.epoch(iteration))
        clamp_gradients_(self.params.values(), self.cfg.meta_grad_clip)
        self.optimizer.step()
        return metrics if lr is None else {**metrics, "meta_lr": lr}

    # --- evaluation ---

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, generator: Generators | None = None) -> Params:
        """Test-time adaptation of a stack of tasks: ``eval_inner_steps`` full-batch SGD steps on
        each support set, as in Finn et al. (``generator`` is unused)."""
        with torch.enable_grad():
            params = expand_tasks(self.params, len(support_y))
            for step in range(self.cfg.eval_inner_steps):
                params = self.inner_step(params, support_x, support_y, step, False)
        return {name: p.detach() for name, p in params.items()}

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Logits under ``adapt``'s parameters, at its last step's model arguments."""
        return self.logits(params, x, self.cfg.eval_inner_steps - 1)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` from any device (the generator is a CPU one: its state goes there)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
