"""Reptile's inner optimiser: Adam on plain tensors, with a state that outlives a task.

The reference (openai/supervised-reptile) never resets its inner Adam: the moments persist
across meta-iterations and, by default, from one task of a meta-batch into the next, so the
state is data the algorithm carries (and checkpoints), not an optimiser object. The update
follows ``torch.optim.Adam`` (epsilon added to the bias-corrected root); the reference TensorFlow
code adds it before bias correction, a difference only at ~1e-8 scale.
"""

from __future__ import annotations

import torch

from gbml.algorithms.core import Params


def new_adam_state(params: Params) -> dict:
    return {"step": 0,
            "exp_avg": {k: torch.zeros_like(p) for k, p in params.items()},
            "exp_avg_sq": {k: torch.zeros_like(p) for k, p in params.items()}}


def map_moments(fn, state: dict) -> dict:
    """``state`` with ``fn`` applied to every moment tensor."""
    return {"step": state["step"], **{m: {k: fn(v) for k, v in state[m].items()}
                                      for m in ("exp_avg", "exp_avg_sq")}}


def stacked_adam_state(state: dict, n: int, mode: str) -> dict:
    """The inner Adam state a stack of ``n`` tasks starts from, moments with a task axis: the
    carried ``state`` itself (``n`` = 1, a view: updated in place), copies of it, or fresh moments."""
    if mode == "sequential":
        return map_moments(lambda v: v.unsqueeze(0), state)
    if mode in ("parallel", "carried"):
        return map_moments(lambda v: v.unsqueeze(0).expand(n, *v.shape).clone(), state)
    return map_moments(lambda v: v.new_zeros(n, *v.shape), state) | {"step": 0}


@torch.no_grad()
def adam_step_(params: list[torch.Tensor], grads: list[torch.Tensor], state: dict, names: list[str], lr: float,
               beta1: float, beta2: float, eps: float) -> None:
    """One in-place Adam step on ``params`` (the tensors of ``names``) and on ``state``."""
    state["step"] += 1
    t = state["step"]
    m = [state["exp_avg"][k] for k in names]
    v = [state["exp_avg_sq"][k] for k in names]
    # Multi-tensor (foreach) ops: the inner loop runs thousands of tiny steps, so per-tensor
    # dispatch overhead would otherwise rival the convolutions.
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, grads, alpha=1 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
    denom = torch._foreach_div(v, 1 - beta2 ** t)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, m, denom, value=-lr / (1 - beta1 ** t))
