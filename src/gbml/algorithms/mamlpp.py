"""MAML++ (Antoniou, Edwards, Storkey 2019, "How to train your MAML", section 4).

MAML (``gbml.algorithms.maml``) with five independent switches, each one of MAML's hooks, so each
can be ablated from ``params.yaml``:

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
#42 reports that the backup aliases the live buffers). Here the per-task engine
(``Conv4.forward_tasks``) normalises with the batch it is given and never writes the running
statistics (the model keeps the buffers, so checkpoints keep their layout): evaluation cannot
leak test tasks into them, and the evaluator's transductive / non-transductive choice applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from gbml.algorithms.core import CLASSIFICATION, Objective, Params
from gbml.algorithms.maml import MAML
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
    # MAML's switches MAML++ does not have, at MAML's defaults: the setting's shots, every inner
    # step sees the whole support set, the outer loss is on the query set, and the switches above
    # set the order.
    train_shots: ClassVar[int] = 0
    inner_batch: ClassVar[int] = 0
    replacement: ClassVar[bool] = False
    tail: ClassVar[str] = "separate"

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


class MAMLPlusPlus(MAML):
    """MAML with its hooks set by the five switches. The engine (``forward_tasks``) does not track
    the per-step running statistics; nothing reads them (see the module docstring)."""

    cfg: MAMLPlusPlusConfig

    @staticmethod
    def model_kwargs(cfg: MAMLPlusPlusConfig) -> dict:
        """BNRS: a set of batch-norm statistics (and, with BNWB, weights) per inner step."""
        return {"bn_steps": cfg.bn_steps}

    def __init__(self, model: nn.Module, cfg: MAMLPlusPlusConfig, shots: int, seed: int = 0,
                 objective: Objective = CLASSIFICATION):
        if (has := getattr(model, "bn_steps", 0)) != cfg.bn_steps:
            raise ValueError(f"MAML++ with per_step_bn={cfg.per_step_bn} and inner_steps={cfg.inner_steps} "
                             f"needs Conv4(bn_steps={cfg.bn_steps}); the model has bn_steps={has}")
        super().__init__(model, cfg, shots, seed, objective)
        # LSLR: one rate per adapted tensor and inner step, meta-learned with the initialisation.
        self.inner_lrs: Params = {
            n: torch.full((cfg.inner_steps,), cfg.inner_lr, dtype=self.params[n].dtype,
                          device=self.params[n].device, requires_grad=True)
            for n in self.inner_names} if cfg.lslr else {}
        self.optimizer = torch.optim.Adam([*self.params.values(), *self.inner_lrs.values()],
                                          lr=cfg.meta_lr)
        # Validation (and the checkpoint ensemble's candidates) once per epoch, as the reference.
        self.validate_every = cfg.iters_per_epoch
        self.ensemble_top_n = cfg.ensemble_top_n

    def adapted_parameter_names(self) -> list[str]:
        """Every parameter, batch norm's only with ``inner_loop_bn_params`` (the released configs:
        off)."""
        norm = {f"{prefix}.{name}" for prefix, module in self.model.named_modules()
                if isinstance(module, (GroupBatchNorm, nn.modules.batchnorm._BatchNorm))
                for name, _ in module.named_parameters(recurse=False)}
        return [n for n in self.params if self.cfg.inner_loop_bn_params or n not in norm]

    # --- the hooks, all functions of the step, epoch or iteration, so a resumed run continues exactly ---

    def step_rates(self, step: int) -> float | Params:
        """LSLR: inner step ``step``'s rate per tensor; else the fixed ``inner_lr``."""
        return {n: rates[step] for n, rates in self.inner_lrs.items()} if self.cfg.lslr else self.cfg.inner_lr

    def step_kwargs(self, step: int) -> dict:
        """Per-step batch norm: the model uses inner step ``step``'s row."""
        return {"step": step} if self.cfg.per_step_bn else {}

    def epoch(self, iteration: int) -> int:   # an epoch is ``iters_per_epoch`` meta-iterations
        return iteration // self.cfg.iters_per_epoch

    def step_weights(self, epoch: int) -> list[float]:
        """MSL: every step's query loss, annealed towards the last over ``msl_epochs``."""
        steps = self.cfg.inner_steps
        if self.cfg.msl and epoch < self.cfg.msl_epochs:
            return msl_weights(steps, epoch, self.cfg.msl_epochs)
        return super().step_weights(epoch)

    def second_order(self, epoch: int) -> bool:
        """DA: first order for ``first_order_epochs`` epochs, then second order."""
        return not (self.cfg.da and epoch < self.cfg.first_order_epochs)

    def meta_lr_at(self, iteration: int) -> float:
        """CA: cosine annealing over ``meta_iters`` (the closed form of ``CosineAnnealingLR`` with
        ``T_max=meta_iters``; the reference steps it once per epoch, a negligible difference)."""
        cfg, t = self.cfg, min(iteration, self.cfg.meta_iters) / self.cfg.meta_iters
        if not cfg.ca:
            return cfg.meta_lr
        return cfg.min_meta_lr + (cfg.meta_lr - cfg.min_meta_lr) * (1 + math.cos(math.pi * t)) / 2

    def curve_metrics(self) -> dict[str, float]:
        """The learned inner rates at each curve point (once per epoch), ``lslr/<tensor>/step<k>``:
        their course over training (Antoniou et al. show only the final ones)."""
        return {f"lslr/{name}/step{k + 1}": float(rate) for name, rates in self.inner_lrs.items()
                for k, rate in enumerate(rates.detach().cpu().tolist())}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "inner_lrs": {n: r.detach().clone() for n, r in self.inner_lrs.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for n, rates in self.inner_lrs.items():
                rates.copy_(state["inner_lrs"][n])
        self.optimizer.load_state_dict(state["optimizer"])
