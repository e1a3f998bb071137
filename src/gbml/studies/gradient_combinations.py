"""Which inner-loop gradients make meta-learning work? (Nichol, Achiam, Schulman 2018, section 6.2,
Figure 3.)

A task's inner loop takes k plain SGD steps on k disjoint minibatches, phi_{i+1} = phi_i - alpha g_i,
g_i the gradient of minibatch i at phi_i. Each arm meta-trains with one combination of them as its
update, phi <- phi - eps * alpha * sum_{i in S} g_i, eps annealed linearly to 0 (the reference's
interpolation): S = {1} is joint training (the gradient at phi itself), {k} is first-order MAML
(the last minibatch's gradient after k - 1 steps), {1..k} is Reptile (phi - W / alpha). The paper
(supervised-reptile README, "Comparing different inner-loop gradient combinations"): 5-way 5-shot
Omniglot, minibatches of 25, alpha = 0.003, meta-batch 1, eps = 0.25 -> 0, 40,000 iterations,
accuracy after 5 SGD steps on a 5-shot support set against meta-iterations. Its averaged arms
(1/k of a sum) are the sums at eps / k, the same direction with a smaller step: not run here.

Every arm starts from the same initialisation and sees the same task stream (the study seed), so
arms differ only in the update; each task draws k x batch / ways examples per class so its k
minibatches are disjoint, whatever the arm (an arm ignores the gradients after its last index).
"""

from __future__ import annotations

import torch

from gbml.algorithms.core import LossFn, Params


def parse_arm(name: str, inner_steps: int) -> list[int]:
    """``"g1+g3"`` -> [1, 3]: the inner gradients an arm's update sums (1-based, each <= k)."""
    try:
        indices = [int(part.strip().removeprefix("g")) for part in name.split("+")]
    except ValueError:
        raise ValueError(f"arm {name!r}: expected gradients joined by '+', e.g. 'g1', 'g2+g3'") from None
    if not indices or len(set(indices)) != len(indices) or not all(1 <= i <= inner_steps for i in indices):
        raise ValueError(f"arm {name!r}: each of g1..g{inner_steps} at most once")
    return sorted(indices)


def inner_gradients(loss: LossFn, params: Params, batches, lr: float) -> list[Params]:
    """g_1..g_k of plain SGD on ``batches`` from ``params``: g_i = grad L_i(phi_i) with
    phi_{i+1} = phi_i - lr * g_i. Detached: the update is first-order by construction."""
    phi = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    grads = []
    for x, y in batches:
        g = dict(zip(phi, torch.autograd.grad(loss(phi, x, y), list(phi.values()))))
        grads.append(g)
        phi = {name: (p - lr * g[name]).detach().requires_grad_(True) for name, p in phi.items()}
    return grads


def disjoint_batches(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int,
                     generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` minibatches of ``batch`` examples, no example in two (the reference's cycling
    sampler over a mini-dataset of exactly ``steps * batch`` examples)."""
    if batch * steps > len(y):
        raise ValueError(f"{steps} disjoint minibatches of {batch} need {batch * steps} examples, the task has {len(y)}")
    order = torch.randperm(len(y), generator=generator)[: batch * steps]
    return [(x[i], y[i]) for i in order.split(batch)]


@torch.no_grad()
def apply_update(params: Params, grads: list[Params], arm: list[int], step: float) -> None:
    """phi <- phi - step * sum_{i in arm} g_i, in place (``step`` = eps * alpha)."""
    for name, p in params.items():
        p.sub_(step * sum(grads[i - 1][name] for i in arm))


def meta_train_arm(model, arm: list[int], cfg, train, curve, progress: bool = False) -> list[dict]:
    """Meta-train ``model`` in place with ``arm``'s update on ``train``'s tasks (an
    ``EpisodeSampler`` of ``inner_steps * inner_batch / ways`` shots, no queries); ``curve(iteration)`` scores it
    (held-out accuracy) every ``cfg.eval_every`` iterations and at the end. Returns the curve."""
    from tqdm.auto import tqdm

    from gbml.algorithms.core import make_loss

    loss, params = make_loss(model), dict(model.named_parameters())
    generator = torch.Generator().manual_seed(train.seed + 7919)
    points = [curve(0)]
    for iteration in tqdm(range(cfg.meta_iters), desc=f"arm {'+'.join(f'g{i}' for i in arm)}", disable=not progress):
        task = train.sample()
        batches = disjoint_batches(task.support_x, task.support_y, cfg.inner_batch, cfg.inner_steps, generator)
        grads = inner_gradients(loss, params, batches[: max(arm)], cfg.inner_lr)
        frac = iteration / cfg.meta_iters
        eps = frac * cfg.meta_step_final + (1 - frac) * cfg.meta_step
        apply_update(params, grads, arm, eps * cfg.inner_lr)
        done = iteration + 1
        if done % cfg.eval_every == 0 or done == cfg.meta_iters:
            points.append(curve(done))
    return points
