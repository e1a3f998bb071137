"""MAML++ (Antoniou, Edwards, Storkey 2019, "How to train your MAML", section 4).

MAML with five independent switches, so each can be ablated from ``params.yaml``:

* ``msl``, multi-step loss: the outer loss is ``sum_k w_k L_query(theta_k)`` over the inner steps
  ``k``, the weights starting uniform and annealed over ``msl_epochs`` towards the last step;
  afterwards only the last step's loss is used.
* ``lslr``, per-layer per-step learning rates: the inner step ``k`` updates each parameter
  tensor with its own rate ``alpha[name][k]``, initialised to ``inner_lr`` and meta-learned.
* ``per_step_bn``, per-step batch norm (BNWB and BNRS): batch-norm weights, biases and running
  statistics per inner step (``Conv4(bn_steps=...)``); step ``k``'s support pass and the query
  pass after step ``k`` use row ``k``.
* ``da``, derivative-order annealing: first-order meta-gradients for ``first_order_epochs``
  epochs, second order afterwards.
* ``ca``, cosine annealing of the outer Adam's learning rate from ``meta_lr`` to ``min_meta_lr``.

An epoch is ``iters_per_epoch`` meta-iterations. With every switch off and
``inner_loop_bn_params`` on, this is MAML with full-batch inner steps, step for step.

Evaluation. The reference code normalises with batch statistics in every phase (its
``MetaBatchNormLayer`` calls ``F.batch_norm(..., training=True)``; issues #3 and #24 of
HowToTrainYourMAMLPytorch), so the per-step running statistics are tracked but never used. It
also means to discard what test tasks add to them (a backup is restored after each task; issue
#42 reports that the backup aliases the live buffers). Here ``adapt`` and ``predict`` run the
model in eval mode, so evaluation leaves the statistics untouched, and prediction normalises with
the batch it is given: the evaluator's transductive / non-transductive choice still applies.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from gbml.algorithms.core import (CLASSIFICATION, LossFn, MetaLearner, Objective, Params, check_engine,
                                  clamp_gradients_, expand_tasks, mean_score, sgd_step, summed_tasks_loss, tasks_loss)
from gbml.data.tasks import Episode, stack_tasks, task_list
from gbml.fields import check, count, non_negative, rate
from gbml.models.conv4 import GroupBatchNorm


@dataclass(frozen=True)
class MAMLPlusPlusConfig:
    # Defaults: the reference code's released Omniglot configs
    # (experiment_config/omniglot_maml++-omniglot_<shots>_8_0.1_64_<ways>_<seed>.json): 100 epochs
    # of 500 iterations, meta-batch 8, Adam at 1e-3 cosine-annealed to 1e-5, 5 inner steps at 0.1
    # (5 at evaluation), one target example per class, MSL over the first 10 epochs, LSLR,
    # per-step BN with BN parameters outside the inner loop. (The README's earlier Omniglot
    # template has meta-batch 16, 150 epochs, inner lr 0.4.)
    meta_iters: int = count(50000)
    iters_per_epoch: int = count(500)
    meta_batch: int = count(8)
    meta_lr: float = rate(1e-3)
    min_meta_lr: float = non_negative(1e-5)
    inner_steps: int = count(5)
    inner_lr: float = rate(0.1)
    train_queries: int = count(1)
    eval_inner_steps: int = count(5)
    msl: bool = True
    msl_epochs: int = count(10, minimum=0)
    lslr: bool = True
    per_step_bn: bool = True
    # MAML adapts every parameter; the reference's released configs leave batch-norm weights and
    # biases out of the inner loop (enable_inner_loop_optimizable_bn_params: false).
    inner_loop_bn_params: bool = False
    da: bool = True
    # 50: the paper's section 4 (DA) as we recall it -- check against the PDF. The reference's
    # first_order_to_second_order_epoch=k is first order through epoch k, i.e. k + 1 here; its
    # released configs set k=-1 (second order throughout), the README template k=80.
    first_order_epochs: int = count(50, minimum=0)
    ca: bool = True
    # Final test: the reference ensembles the N checkpoints (one per epoch) with the best
    # validation accuracy, averaging their query logits (evaluated_test_set_using_the_best_models).
    # 0 evaluates the final checkpoint alone (and needs no validation split).
    ensemble_top_n: int = count(5, minimum=0)
    # Clamp meta-gradient elements to [-c, c] before Adam; 0: off. The reference clamps at 10
    # on Mini-ImageNet (few_shot_learning_system.py, when 'imagenet' is in the dataset name).
    meta_grad_clip: float = non_negative(0.0)

    def __post_init__(self):
        check(self)
        if not self.min_meta_lr <= self.meta_lr:
            raise ValueError(f"mamlpp.min_meta_lr must be in [0, meta_lr], got {self.min_meta_lr}")
        if (self.lslr or self.per_step_bn) and self.eval_inner_steps > self.inner_steps:
            raise ValueError("with lslr or per_step_bn, each evaluation step needs its trained "
                             f"step: eval_inner_steps ({self.eval_inner_steps}) must be <= "
                             f"inner_steps ({self.inner_steps})")

    @property
    def bn_steps(self) -> int:
        """The ``Conv4(bn_steps=...)`` this configuration needs."""
        return self.inner_steps if self.per_step_bn else 0


def msl_weights(steps: int, epoch: int, msl_epochs: int) -> list[float]:
    """Per-step importance of the query losses at ``epoch`` (the reference's
    ``get_per_step_loss_importance_vector``): uniform at epoch 0; each non-final weight decays by
    ``1 / steps / msl_epochs`` per epoch down to ``0.03 / steps`` and the final one takes the
    rest, so the weights always sum to 1."""
    decay, floor = 1.0 / steps / msl_epochs, 0.03 / steps
    early = max(1.0 / steps - epoch * decay, floor)
    last = min(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return [early] * (steps - 1) + [last]


@contextmanager
def training_mode(model: nn.Module, mode: bool):
    """Run with ``model.train(mode)`` (whether BN running statistics are tracked), then restore."""
    previous = model.training
    model.train(mode)
    try:
        yield
    finally:
        model.train(previous)


class MAMLPlusPlus(MetaLearner):
    """``engine`` as MAML's; every method that runs the inner loop takes ``batched``: the
    episode and the parameters then carry a task axis. The batched engine does not track the
    per-step running statistics; nothing reads them (see the module docstring)."""

    @staticmethod
    def model_kwargs(cfg: MAMLPlusPlusConfig) -> dict:
        """BNRS: a set of batch-norm statistics (and, with BNWB, weights) per inner step."""
        return {"bn_steps": cfg.bn_steps}

    @staticmethod
    def episode_shape(cfg: MAMLPlusPlusConfig, shots: int) -> tuple[int, int]:
        """Support and query examples per class of a meta-training episode."""
        return shots, cfg.train_queries

    def __init__(self, model: nn.Module, cfg: MAMLPlusPlusConfig, shots: int, seed: int = 0,
                 objective: Objective = CLASSIFICATION, engine: str = "serial"):
        self.engine = check_engine(engine)
        if getattr(model, "bn_steps", 0) != cfg.bn_steps:
            raise ValueError(f"MAML++ with per_step_bn={cfg.per_step_bn} and inner_steps={cfg.inner_steps} "
                             f"needs Conv4(bn_steps={cfg.bn_steps}); the model has "
                             f"bn_steps={getattr(model, 'bn_steps', 0)}")
        self.model, self.cfg, self.objective = model, cfg, objective
        self.params: Params = dict(model.named_parameters())
        norm = {f"{prefix}.{name}" for prefix, module in model.named_modules()
                if isinstance(module, (GroupBatchNorm, nn.modules.batchnorm._BatchNorm))
                for name, _ in module.named_parameters(recurse=False)}
        self.inner_names = [n for n in self.params if cfg.inner_loop_bn_params or n not in norm]
        # LSLR: one rate per adapted tensor and inner step, meta-learned with the initialisation.
        self.inner_lrs: Params = {
            n: torch.full((cfg.inner_steps,), cfg.inner_lr, dtype=self.params[n].dtype,
                          device=self.params[n].device, requires_grad=True)
            for n in self.inner_names} if cfg.lslr else {}
        self.optimizer = torch.optim.Adam([*self.params.values(), *self.inner_lrs.values()],
                                          lr=cfg.meta_lr)
        self.train_episode_shape = self.episode_shape(cfg, shots)
        self.meta_batch, self.meta_iters = cfg.meta_batch, cfg.meta_iters
        # Validation (and the checkpoint ensemble's candidates) once per epoch, as the reference.
        self.validate_every = cfg.iters_per_epoch
        self.ensemble_top_n = cfg.ensemble_top_n

    # --- the schedules, all functions of the iteration, so a resumed run continues exactly ---

    def step_weights(self, epoch: int) -> list[float]:
        """Weights of the query losses after each inner step in the outer loss."""
        steps = self.cfg.inner_steps
        if self.cfg.msl and epoch < self.cfg.msl_epochs:
            return msl_weights(steps, epoch, self.cfg.msl_epochs)
        return [0.0] * (steps - 1) + [1.0]

    def second_order(self, epoch: int) -> bool:
        return not (self.cfg.da and epoch < self.cfg.first_order_epochs)

    def meta_lr_at(self, iteration: int) -> float:
        """Cosine annealing over ``meta_iters`` (the closed form of ``CosineAnnealingLR`` with
        ``T_max=meta_iters``; the reference steps it once per epoch, a negligible difference)."""
        cfg = self.cfg
        if not cfg.ca:
            return cfg.meta_lr
        t = min(iteration, cfg.meta_iters) / cfg.meta_iters
        return cfg.min_meta_lr + (cfg.meta_lr - cfg.min_meta_lr) * (1 + math.cos(math.pi * t)) / 2

    # --- the inner loop ---

    def logits(self, params: Params, x: torch.Tensor, step: int, batched: bool = False) -> torch.Tensor:
        """The model under ``params``; per-step batch norm uses inner step ``step``'s row."""
        kwargs = {"step": step} if self.cfg.per_step_bn else {}
        if batched:
            return self.model.forward_tasks(params, x, **kwargs)
        return functional_call(self.model, params, (x,), kwargs)

    def query_loss(self, logits: torch.Tensor, y: torch.Tensor, batched: bool) -> torch.Tensor:
        """The objective's loss: of one task, or ``batched`` the mean over tasks."""
        return tasks_loss(self.objective, logits, y) if batched else self.objective.loss(logits, y)

    def step_loss(self, step: int, batched: bool = False) -> LossFn:
        """Inner step ``step``'s support loss (``batched``: summed over tasks, so that each task's
        parameters get their own task's gradient)."""
        def loss(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = self.logits(p, x, step, batched)
            return summed_tasks_loss(self.objective, out, y) if batched else self.objective.loss(out, y)
        return loss

    def step_rates(self, step: int, inner_lrs: Params) -> float | Params:
        """Inner step ``step``'s learning rate: per tensor (LSLR) or the fixed ``inner_lr``."""
        return {n: rates[step] for n, rates in inner_lrs.items()} if self.cfg.lslr else self.cfg.inner_lr

    def inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int,
                   create_graph: bool, batched: bool = False) -> Params:
        return sgd_step(self.step_loss(step, batched), params, x, y, self.step_rates(step, self.inner_lrs),
                        create_graph, self.inner_names)

    def task_loss(self, episode: Episode, epoch: int, batched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The (multi-step) query loss of one task (``batched``: the mean over a stack of tasks),
        differentiable w.r.t. the initialisation and the learning rates, and the query logits
        after the last step."""
        create_graph = self.second_order(epoch)
        params = expand_tasks(self.params, len(episode.query_y)) if batched else self.params
        loss = 0.0
        for step, weight in enumerate(self.step_weights(epoch)):
            params = self.inner_step(params, episode.support_x, episode.support_y, step, create_graph, batched)
            if weight:
                logits = self.logits(params, episode.query_x, step, batched)
                loss = loss + weight * self.query_loss(logits, episode.query_y, batched)
        return loss, logits

    # --- the outer loop ---

    def accumulate_meta_gradient(self, episodes: Episode | list[Episode], epoch: int) -> dict[str, float]:
        """Add the meta-gradient of the mean task loss over ``episodes`` to ``.grad``: serially one
        task's graph at a time, tracking the per-step running statistics meanwhile, or all tasks
        at once."""
        if self.engine == "batched":
            tasks = stack_tasks(episodes)
            loss, logits = self.task_loss(tasks, epoch, batched=True)
            loss.backward()
            return {"train_loss": loss.item(),
                    f"train_{self.objective.metric}": mean_score(self.objective, logits.detach(), tasks.query_y)}
        episodes = task_list(episodes)
        total_loss = total_score = 0.0
        with training_mode(self.model, True):
            for episode in episodes:
                loss, logits = self.task_loss(episode, epoch)
                (loss / len(episodes)).backward()
                total_loss += loss.item()
                total_score += self.objective.score(logits, episode.query_y)
        return {"train_loss": total_loss / len(episodes),
                f"train_{self.objective.metric}": total_score / len(episodes)}

    def meta_step(self, episodes: Episode | list[Episode], iteration: int) -> dict[str, float]:
        lr = self.meta_lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.accumulate_meta_gradient(episodes, iteration // self.cfg.iters_per_epoch)
        clamp_gradients_(self.params.values(), self.cfg.meta_grad_clip)
        self.optimizer.step()
        return {**metrics, "meta_lr": lr}

    def curve_metrics(self) -> dict[str, float]:
        """What the training loop records at each curve point (once per epoch): the learned
        inner rates, ``lslr/<tensor>/step<k>``, so their course over training can be plotted
        (Antoniou et al. show only the final ones)."""
        return {f"lslr/{name}/step{k + 1}": float(rate) for name, rates in self.inner_lrs.items()
                for k, rate in enumerate(rates.detach().cpu().tolist())}

    # --- evaluation ---

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              generator: torch.Generator | None = None, batched: bool = False) -> Params:
        """``eval_inner_steps`` full-batch steps from the initialisation (``generator`` is unused),
        leaving the initialisation and the running statistics unchanged. ``batched``: a stack of
        tasks at once."""
        with torch.enable_grad(), training_mode(self.model, False):
            params = expand_tasks(self.params, len(support_y)) if batched else self.params
            for step in range(self.cfg.eval_inner_steps):
                params = self.inner_step(params, support_x, support_y, step, False, batched)
        return {name: p.detach() for name, p in params.items()}

    def adapt_tasks(self, support_x: torch.Tensor, support_y: torch.Tensor,
                    generator: torch.Generator | None = None) -> Params:
        """``adapt`` for a stack of tasks; the result has a leading task axis."""
        return self.adapt(support_x, support_y, generator, batched=True)

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Logits under parameters returned by ``adapt``: per-step batch norm uses the last
        adaptation step's row, as the reference's target pass does."""
        with training_mode(self.model, False):
            return self.logits(params, x, self.cfg.eval_inner_steps - 1)

    def predict_tasks(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``predict`` for a stack of tasks (``params`` from ``adapt_tasks``)."""
        return self.logits(params, x, self.cfg.eval_inner_steps - 1, batched=True)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "inner_lrs": {n: r.detach().clone() for n, r in self.inner_lrs.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for n, rates in self.inner_lrs.items():
                rates.copy_(state["inner_lrs"][n])
        self.optimizer.load_state_dict(state["optimizer"])
