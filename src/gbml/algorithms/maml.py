"""MAML and first-order MAML (Finn, Abbeel, Levine 2017, Algorithm 2).

Inner loop: ``inner_steps`` SGD steps on the support set from the shared initialisation theta.
Outer loop: Adam on the mean post-adaptation query loss over a meta-batch of tasks,
differentiating through the inner loop (second order) unless ``first_order`` is set, in which
case the gradient at the adapted parameters is applied to theta (section 5.2, "first-order
approximation").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gbml.algorithms.core import CLASSIFICATION, Objective, Params, make_loss, make_predict, sgd_step
from gbml.data.tasks import Episode


@dataclass(frozen=True)
class MAMLConfig:
    meta_iters: int = 60000
    meta_batch: int = 32
    meta_lr: float = 1e-3
    inner_steps: int = 1
    inner_lr: float = 0.4
    first_order: bool = False
    train_queries: int = 1      # query examples per class in meta-training episodes
    eval_inner_steps: int = 3   # Finn et al.: 3 steps at test time for Omniglot 5-way


class MAML:
    def __init__(self, model: nn.Module, cfg: MAMLConfig, shots: int,
                 objective: Objective = CLASSIFICATION):
        self.model, self.cfg, self.objective = model, cfg, objective
        self.loss = make_loss(model, objective)
        self.predict = make_predict(model)
        self.params: Params = dict(model.named_parameters())
        self.optimizer = torch.optim.Adam(self.params.values(), lr=cfg.meta_lr)
        self.train_episode_shape = (shots, cfg.train_queries)
        self.meta_batch, self.meta_iters = cfg.meta_batch, cfg.meta_iters

    def inner_loop(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int,
                   create_graph: bool) -> Params:
        for _ in range(steps):
            params = sgd_step(self.loss, params, x, y, self.cfg.inner_lr, create_graph)
        return params

    def task_query_loss(self, episode: Episode) -> tuple[torch.Tensor, float]:
        """Post-adaptation query loss of one task, differentiable w.r.t. ``self.params``."""
        adapted = self.inner_loop(self.params, episode.support_x, episode.support_y,
                                  self.cfg.inner_steps, create_graph=not self.cfg.first_order)
        out = self.predict(adapted, episode.query_x)
        return self.objective.loss(out, episode.query_y), self.objective.score(out, episode.query_y)

    def accumulate_meta_gradient(self, episodes: list[Episode]) -> dict[str, float]:
        """Add the meta-gradient of the mean query loss over ``episodes`` to ``.grad``.

        Tasks are backpropagated one at a time so only one task's graph is alive at once.
        """
        total_loss = total_score = 0.0
        for episode in episodes:
            loss, score = self.task_query_loss(episode)
            (loss / len(episodes)).backward()
            total_loss += loss.item()
            total_score += score
        return {"train_loss": total_loss / len(episodes),
                f"train_{self.objective.metric}": total_score / len(episodes)}

    def meta_step(self, episodes: list[Episode], iteration: int) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.accumulate_meta_gradient(episodes)
        self.optimizer.step()
        return metrics

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              generator: torch.Generator | None = None) -> Params:
        """Test-time adaptation (full-batch SGD: ``generator`` is unused)."""
        with torch.enable_grad():
            adapted = self.inner_loop(self.params, support_x, support_y,
                                      self.cfg.eval_inner_steps, create_graph=False)
        return {name: p.detach() for name, p in adapted.items()}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
