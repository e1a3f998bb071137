"""Reptile (Nichol, Achiam, Schulman 2018, Algorithm 2 and Appendix A).

For each task of a meta-batch, train a copy of the initialisation phi for ``inner_iters``
minibatches of ``inner_batch`` examples drawn from ``train_shots`` examples per class, giving
W_i; then move phi towards the mean: ``phi += eps * mean_i(W_i - phi)``, with eps annealed
linearly from ``meta_step`` to ``meta_step_final`` over training.

As in the reference code, the inner optimiser is Adam with beta1 = 0 whose moments are *not*
reset between tasks: they persist across tasks and meta-iterations. Evaluation adapts with a
copy of that state ("carried", what the reference code does: it backs the state up and restores
it after each test task) or with a fresh one ("fresh"), and never alters the training state.

The Adam update follows ``torch.optim.Adam`` (epsilon added to the bias-corrected root); the
reference TensorFlow code adds it before bias correction, a difference only at ~1e-8 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gbml.algorithms.core import (CLASSIFICATION, Objective, Params, detached_leaves, make_loss,
                                  make_predict, minibatch_indices)
from gbml.data.tasks import Episode


@dataclass(frozen=True)
class ReptileConfig:
    meta_iters: int = 100000
    meta_batch: int = 5
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    train_shots: int = 10
    inner_optimizer: str = "adam"   # "adam" or "sgd"
    inner_lr: float = 1e-3
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    inner_batch: int = 10
    inner_iters: int = 5
    replacement: bool = False
    eval_inner_batch: int = 5
    eval_inner_iters: int = 50
    eval_adam_state: str = "carried"  # "carried" or "fresh"
    serial: bool = False            # Algorithm 1: move phi after each task, not once per meta-batch
    outer_optimizer: str = "sgd"    # "sgd": phi += eps * mean(W - phi); "adam": phi - mean(W) as Adam's gradient, lr eps

    def __post_init__(self):
        if self.outer_optimizer not in ("adam", "sgd"):
            raise ValueError(f"reptile.outer_optimizer must be 'adam' or 'sgd', got {self.outer_optimizer!r}")
        if self.inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"reptile.inner_optimizer must be 'adam' or 'sgd', got {self.inner_optimizer!r}")
        if self.eval_adam_state not in ("carried", "fresh"):
            raise ValueError(f"reptile.eval_adam_state must be 'carried' or 'fresh', got {self.eval_adam_state!r}")


def new_adam_state(params: Params) -> dict:
    return {"step": 0,
            "exp_avg": {k: torch.zeros_like(p) for k, p in params.items()},
            "exp_avg_sq": {k: torch.zeros_like(p) for k, p in params.items()}}


def clone_adam_state(state: dict) -> dict:
    return {"step": state["step"],
            "exp_avg": {k: v.clone() for k, v in state["exp_avg"].items()},
            "exp_avg_sq": {k: v.clone() for k, v in state["exp_avg_sq"].items()}}


class Reptile:
    def __init__(self, model: nn.Module, cfg: ReptileConfig, shots: int, seed: int,
                 objective: Objective = CLASSIFICATION):
        self.model, self.cfg, self.objective = model, cfg, objective
        self.loss = make_loss(model, objective)
        self.predict = make_predict(model)
        self.params: Params = dict(model.named_parameters())
        self.adam_state = new_adam_state(self.params)
        # Minibatch order inside the inner loop has its own stream, so it is checkpointable.
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.train_episode_shape = (cfg.train_shots, 0)
        self.eval_shots = shots
        self.meta_batch, self.meta_iters = cfg.meta_batch, cfg.meta_iters
        # The outer Adam's learning rate is set to the annealed eps before every step.
        self.outer = (torch.optim.Adam(self.params.values(), lr=cfg.meta_step)
                      if cfg.outer_optimizer == "adam" else None)

    def meta_step_size(self, iteration: int) -> float:
        """Linear annealing of the outer step (Appendix A), ``iteration`` counted from 0."""
        frac = iteration / self.cfg.meta_iters
        return frac * self.cfg.meta_step_final + (1 - frac) * self.cfg.meta_step

    @torch.no_grad()
    def inner_update(self, weights: Params, grads: list[torch.Tensor], adam_state: dict) -> None:
        """One in-place inner-optimiser step on ``weights``."""
        lr = self.cfg.inner_lr
        if self.cfg.inner_optimizer == "sgd":
            torch._foreach_add_(list(weights.values()), grads, alpha=-lr)
            return
        b1, b2, eps = self.cfg.adam_beta1, self.cfg.adam_beta2, self.cfg.adam_eps
        adam_state["step"] += 1
        t = adam_state["step"]
        params = list(weights.values())
        m = [adam_state["exp_avg"][k] for k in weights]
        v = [adam_state["exp_avg_sq"][k] for k in weights]
        # Multi-tensor (foreach) ops: the inner loop runs thousands of tiny steps, so per-tensor
        # dispatch overhead would otherwise rival the convolutions.
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_div(v, 1 - b2 ** t)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, value=-lr / (1 - b1 ** t))

    def inner_loop(self, params: Params, adam_state: dict, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int, iters: int, generator: torch.Generator,
                   ) -> tuple[Params, dict[str, float]]:
        """Train a copy of ``params`` on (x, y); ``adam_state`` is updated in place."""
        weights = detached_leaves(params)
        for idx in minibatch_indices(len(y), batch_size, iters, self.cfg.replacement, generator):
            out = self.predict(weights, x[idx])
            value = self.objective.loss(out, y[idx])
            grads = torch.autograd.grad(value, list(weights.values()))
            self.inner_update(weights, grads, adam_state)
        # Reported on the last inner minibatch, before its update (as the reference code does).
        metrics = {"train_loss": value.item(), f"train_{self.objective.metric}": self.objective.score(out, y[idx])}
        return {k: w.detach() for k, w in weights.items()}, metrics

    def meta_step(self, episodes: list[Episode], iteration: int) -> dict[str, float]:
        eps = self.meta_step_size(iteration)
        adapted, metrics = [], []
        for episode in episodes:
            weights, m = self.inner_loop(self.params, self.adam_state, episode.support_x,
                                         episode.support_y, self.cfg.inner_batch, self.cfg.inner_iters,
                                         self.generator)
            metrics.append(m)
            if self.cfg.serial:
                self.outer_update([weights], eps)
            else:
                adapted.append(weights)
        if not self.cfg.serial:
            self.outer_update(adapted, eps)
        out = {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}
        out["meta_step_size"] = eps
        return out

    def outer_update(self, adapted: list[Params], eps: float) -> None:
        """Move phi towards the mean of the adapted weights: by eps * (mean W - phi), or by an
        Adam step whose gradient is phi - mean W."""
        with torch.no_grad():
            for name, phi in self.params.items():
                delta = torch.stack([w[name] for w in adapted]).mean(0) - phi
                if self.outer is None:
                    phi.add_(delta, alpha=eps)
                else:
                    phi.grad = -delta
        if self.outer is not None:
            for group in self.outer.param_groups:
                group["lr"] = eps
            self.outer.step()
            self.outer.zero_grad(set_to_none=True)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              generator: torch.Generator) -> Params:
        state = (clone_adam_state(self.adam_state) if self.cfg.eval_adam_state == "carried"
                 else new_adam_state(self.params))
        with torch.enable_grad():
            weights, _ = self.inner_loop(self.params, state, support_x, support_y,
                                         self.cfg.eval_inner_batch, self.cfg.eval_inner_iters,
                                         generator)
        return weights

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "adam_state": self.adam_state,
                 "generator": self.generator.get_state()}
        if self.outer is not None:
            state["outer"] = self.outer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.adam_state = state["adam_state"]
        self.generator.set_state(state["generator"])
        if self.outer is not None:
            self.outer.load_state_dict(state["outer"])
