"""MAML's meta-gradient, checked against independent computations (Finn et al. 2017)."""

from __future__ import annotations

import pytest
import torch

from gbml.algorithms.core import make_loss, sgd_step
from gbml.algorithms.maml import MAML, MAMLConfig
from helpers import flat, random_episode, tiny_model


def meta_gradient(maml: MAML, episodes) -> torch.Tensor:
    maml.optimizer.zero_grad(set_to_none=True)
    maml.accumulate_meta_gradient(episodes)
    return flat(p.grad for p in maml.params.values())


def post_adaptation_query_loss(maml: MAML, vector: torch.Tensor, episodes) -> float:
    """J(theta) = mean_i L_query_i(theta - lr * grad L_support_i(theta) ...), evaluated at
    the flat parameter vector ``vector`` with no graph through the inner loop."""
    params, offset = {}, 0
    for name, p in maml.params.items():
        params[name] = vector[offset: offset + p.numel()].view_as(p).clone().requires_grad_(True)
        offset += p.numel()
    total = 0.0
    for ep in episodes:
        adapted = params
        for _ in range(maml.cfg.inner_steps):
            adapted = sgd_step(maml.loss, adapted, ep.support_x, ep.support_y, maml.cfg.inner_lr, False)
        total += maml.loss(adapted, ep.query_x, ep.query_y).item()
    return total / len(episodes)


@pytest.mark.parametrize("inner_steps", [1, 2, 3])
def test_second_order_meta_gradient_equals_finite_differences(inner_steps):
    maml = MAML(tiny_model(), MAMLConfig(inner_steps=inner_steps, inner_lr=0.3, meta_batch=2), shots=2)
    episodes = [random_episode(seed=1), random_episode(seed=2)]
    analytic = meta_gradient(maml, episodes)

    theta = flat(p.detach() for p in maml.params.values())
    h = 1e-6
    numeric = torch.empty_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = h
        numeric[i] = (post_adaptation_query_loss(maml, theta + e, episodes)
                      - post_adaptation_query_loss(maml, theta - e, episodes)) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_first_order_meta_gradient_is_query_gradient_at_adapted_parameters():
    maml = MAML(tiny_model(), MAMLConfig(inner_steps=2, inner_lr=0.3, first_order=True), shots=2)
    episode = random_episode(seed=3)
    analytic = meta_gradient(maml, [episode])

    # Independent unroll: plain SGD steps on detached copies, then the query gradient there.
    loss = make_loss(maml.model)
    adapted = {k: p.detach().clone().requires_grad_(True) for k, p in maml.params.items()}
    for _ in range(2):
        grads = torch.autograd.grad(loss(adapted, episode.support_x, episode.support_y), list(adapted.values()))
        adapted = {k: (p - 0.3 * g).detach().requires_grad_(True) for (k, p), g in zip(adapted.items(), grads)}
    expected = torch.autograd.grad(loss(adapted, episode.query_x, episode.query_y), list(adapted.values()))
    torch.testing.assert_close(analytic, flat(expected))


def test_first_and_second_order_differ():
    """Guards the test above: the second-order term is not negligible on this model."""
    episode = random_episode(seed=4)
    second = meta_gradient(MAML(tiny_model(), MAMLConfig(inner_lr=0.3), shots=2), [episode])
    first = meta_gradient(MAML(tiny_model(), MAMLConfig(inner_lr=0.3, first_order=True), shots=2), [episode])
    assert (second - first).abs().max() > 1e-4


def test_meta_step_applies_adam_to_the_mean_task_gradient():
    model = tiny_model()
    maml = MAML(model, MAMLConfig(inner_lr=0.3, meta_lr=0.01, meta_batch=2), shots=2)
    episodes = [random_episode(seed=5), random_episode(seed=6)]
    grad = meta_gradient(maml, episodes)
    before = flat(p.detach().clone() for p in maml.params.values())
    maml.meta_step(episodes, iteration=0)
    after = flat(p.detach() for p in maml.params.values())
    # Adam's first step moves every coordinate by lr * sign(grad) (up to epsilon).
    moved = grad.abs() > 1e-6
    torch.testing.assert_close((before - after)[moved], 0.01 * grad.sign()[moved], rtol=1e-3, atol=1e-6)


def test_adapt_leaves_the_initialisation_unchanged():
    maml = MAML(tiny_model(), MAMLConfig(eval_inner_steps=5), shots=2)
    before = flat(p.detach().clone() for p in maml.params.values())
    episode = random_episode()
    adapted = maml.adapt(episode.support_x, episode.support_y)
    assert torch.equal(before, flat(p.detach() for p in maml.params.values()))
    assert not torch.equal(before, flat(adapted.values()))
