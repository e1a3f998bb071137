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

from gbml.algorithms.core import (CLASSIFICATION, LossFn, MetaLearner, Objective, Params, check_engine,
                                  clamp_gradients_, expand_tasks, make_loss, make_predict, make_tasks_loss, mean_score,
                                  minibatch_indices, sgd_step, stacked_minibatch_indices, tasks_loss)
from gbml.data.tasks import Episode, stack_tasks, task_list
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
    """``engine`` "serial" backpropagates the tasks of a meta-batch one at a time (the reference
    path); "batched" runs every task at once, each under its own parameters (the model's
    ``forward_tasks``), and backpropagates the mean loss once. Both give the same update."""

    @staticmethod
    def episode_shape(cfg: MAMLConfig, shots: int) -> tuple[int, int]:
        """Support and query examples per class of a meta-training episode. A shared tail needs
        no query examples; keep episodes small then."""
        return cfg.train_shots or shots, cfg.train_queries if cfg.tail == "separate" else 0

    def __init__(self, model: nn.Module, cfg: MAMLConfig, shots: int, seed: int = 0,
                 objective: Objective = CLASSIFICATION, engine: str = "serial"):
        self.model, self.cfg, self.objective = model, cfg, objective
        self.engine = check_engine(engine)
        self.loss = make_loss(model, objective)
        self.predict = make_predict(model)
        self.tasks_loss = make_tasks_loss(model, objective)   # the batched engine's inner loss
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

    def task_batches(self, episode: Episode) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                       tuple[torch.Tensor, torch.Tensor]]:
        """The inner loop's (x, y) batches for one task and the tail the outer loss uses."""
        x, y = episode.support_x, episode.support_y
        steps, shared = self.cfg.inner_steps, self.cfg.tail == "shared"
        if self.cfg.inner_batch:
            idx = minibatch_indices(len(y), self.cfg.inner_batch, steps + shared,
                                    self.cfg.replacement, self.generator)
            batches = [(x[i], y[i]) for i in idx]
        else:
            batches = [(x, y)] * (steps + shared)
        if shared:
            return batches[:-1], batches[-1]
        return batches, (episode.query_x, episode.query_y)

    def inner_loop(self, params: Params, batches, create_graph: bool, loss: LossFn | None = None) -> Params:
        """SGD steps on ``batches``; ``loss`` is ``self.tasks_loss`` when ``params`` and the
        batches carry a task axis (the batched engine)."""
        for x, y in batches:
            params = sgd_step(loss or self.loss, params, x, y, self.cfg.inner_lr, create_graph,
                              self.inner_names)
        return params

    def task_query_loss(self, episode: Episode) -> tuple[torch.Tensor, float]:
        """Post-adaptation tail loss of one task, differentiable w.r.t. ``self.params``."""
        batches, (tail_x, tail_y) = self.task_batches(episode)
        adapted = self.inner_loop(self.params, batches, create_graph=not self.cfg.first_order)
        out = self.predict(adapted, tail_x)
        return self.objective.loss(out, tail_y), self.objective.score(out, tail_y)

    def accumulate_meta_gradient(self, episodes: Episode | list[Episode]) -> dict[str, float]:
        """Add the meta-gradient of the mean tail loss over ``episodes`` (a list, or one
        ``Episode`` with a task axis) to ``.grad``.

        Serially, tasks are backpropagated one at a time so only one task's graph is alive.
        """
        if self.engine == "batched":
            return self.accumulate_meta_gradient_batched(stack_tasks(episodes))
        episodes = task_list(episodes)
        total_loss = total_score = 0.0
        for episode in episodes:
            loss, score = self.task_query_loss(episode)
            (loss / len(episodes)).backward()
            total_loss += loss.item()
            total_score += score
        return {"train_loss": total_loss / len(episodes),
                f"train_{self.objective.metric}": total_score / len(episodes)}

    # --- the batched engine: the same computation for every task at once ---

    def stacked_task_batches(self, tasks: Episode) -> tuple[torch.Tensor, ...]:
        """``task_batches`` for every task of a stacked batch: inner batches [tasks, steps, b, ...]
        and the tail [tasks, n, ...]; minibatch indices are drawn task by task, as serially."""
        n_tasks, n = tasks.support_y.shape[:2]
        steps = self.cfg.inner_steps + (self.cfg.tail == "shared")
        if self.cfg.inner_batch:
            idx = stacked_minibatch_indices(n_tasks, n, self.cfg.inner_batch, steps, self.cfg.replacement,
                                            self.generator).to(tasks.support_y.device)
            rows = torch.arange(n_tasks, device=idx.device).view(-1, 1, 1)
            xs, ys = tasks.support_x[rows, idx], tasks.support_y[rows, idx]
        else:   # full-batch steps: every step sees the whole support set (a view, no copies)
            xs = tasks.support_x.unsqueeze(1).expand(-1, steps, *tasks.support_x.shape[1:])
            ys = tasks.support_y.unsqueeze(1).expand(-1, steps, *tasks.support_y.shape[1:])
        if self.cfg.tail == "shared":
            return xs[:, :-1], ys[:, :-1], xs[:, -1], ys[:, -1]
        return xs, ys, tasks.query_x, tasks.query_y

    def accumulate_meta_gradient_batched(self, tasks: Episode) -> dict[str, float]:
        xs, ys, tail_x, tail_y = self.stacked_task_batches(tasks)
        params = expand_tasks(self.params, len(tail_y))
        adapted = self.inner_loop(params, zip(xs.unbind(1), ys.unbind(1)), not self.cfg.first_order,
                                  self.tasks_loss)
        out = self.predict_tasks(adapted, tail_x)
        loss = tasks_loss(self.objective, out, tail_y)   # the mean over tasks: its gradient is theirs
        loss.backward()
        return {"train_loss": loss.item(),
                f"train_{self.objective.metric}": mean_score(self.objective, out.detach(), tail_y)}

    def predict_tasks(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``predict`` for a stack of tasks, ``params`` with a task axis (from ``adapt_tasks``)."""
        return self.model.forward_tasks(params, x)

    def meta_step(self, episodes: Episode | list[Episode], iteration: int) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.accumulate_meta_gradient(episodes)
        clamp_gradients_(self.params.values(), self.cfg.meta_grad_clip)
        self.optimizer.step()
        return metrics

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              generator: torch.Generator | None = None, batched: bool = False) -> Params:
        """Test-time adaptation: full-batch SGD on the support set, as in Finn et al.
        (``generator`` is unused). ``batched``: a stack of tasks ([tasks, n, ...]) at once."""
        with torch.enable_grad():
            params = expand_tasks(self.params, len(support_y)) if batched else self.params
            adapted = self.inner_loop(params, [(support_x, support_y)] * self.cfg.eval_inner_steps,
                                      create_graph=False, loss=self.tasks_loss if batched else self.loss)
        return {name: p.detach() for name, p in adapted.items()}

    def adapt_tasks(self, support_x: torch.Tensor, support_y: torch.Tensor,
                    generator: torch.Generator | None = None) -> Params:
        """``adapt`` for a stack of tasks; the parameters it returns have a leading task axis
        (``predict_tasks`` scores them)."""
        return self.adapt(support_x, support_y, generator, batched=True)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` from any device: the model and Adam copy their tensors onto
        the parameters' device; the generator is a CPU one, so its state goes there."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
