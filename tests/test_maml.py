"""MAML's meta-gradient, checked against independent computations (Finn et al. 2017)."""

from __future__ import annotations

import pytest
import torch

from gbml.algorithms.core import make_loss, sgd_step
from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.data.tasks import stack_tasks
from helpers import adam_step_on_clamped, adapt_one, flat, random_episode, tiny_model


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
    total, loss = 0.0, make_loss(maml.model)
    for ep in episodes:
        adapted = params
        for _ in range(maml.cfg.inner_steps):
            adapted = sgd_step(loss, adapted, ep.support_x, ep.support_y, maml.cfg.inner_lr, False)
        total += loss(adapted, ep.query_x, ep.query_y).item()
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
    adapted = adapt_one(maml, episode)
    assert torch.equal(before, flat(p.detach() for p in maml.params.values()))
    assert not torch.equal(before, flat(adapted.values()))


# Minibatched inner loop and the tail (Nichol et al. 2018, section 6.3).

def one_task_batches(maml: MAML, episode):
    """``task_batches`` of one task: its inner (x, y) batches and its tail."""
    xs, ys, tail_x, tail_y = maml.task_batches(stack_tasks([episode]))
    return list(zip(xs[0], ys[0])), (tail_x[0], tail_y[0])


def rows_of(x: torch.Tensor, pool: torch.Tensor) -> list[int]:
    """Indices in ``pool`` of each row of ``x`` (rows are distinct random images)."""
    return [int((pool == row).flatten(1).all(1).nonzero()) for row in x]


def test_separate_tail_adapts_on_support_minibatches_and_scores_the_queries():
    maml = MAML(tiny_model(), MAMLConfig(inner_steps=3, inner_batch=4, tail="separate"), shots=4)
    episode = random_episode(shots=4, queries=2, seed=7)
    batches, (tail_x, tail_y) = one_task_batches(maml, episode)
    assert len(batches) == 3 and all(len(y) == 4 for _, y in batches)
    for x, _ in batches:
        rows_of(x, episode.support_x)  # raises if a row is not a support example
    assert torch.equal(tail_x, episode.query_x) and torch.equal(tail_y, episode.query_y)


def test_shared_tail_is_the_next_minibatch_of_the_same_support_samples():
    maml = MAML(tiny_model(), MAMLConfig(inner_steps=1, inner_batch=6, tail="shared"), shots=4)
    assert maml.train_episode_shape == (4, 0)  # no query examples needed
    episode = random_episode(shots=4, queries=0, seed=8)
    (inner,), tail = one_task_batches(maml, episode)
    inner_rows, tail_rows = rows_of(inner[0], episode.support_x), rows_of(tail[0], episode.support_x)
    # Cycling: one pass over the 12 support examples is split between the inner batch and the tail.
    assert sorted(inner_rows + tail_rows) == list(range(12))
    assert torch.equal(tail[1], episode.support_y[tail_rows])


def test_minibatches_with_replacement_are_independent_draws_from_the_support_set():
    maml = MAML(tiny_model(), MAMLConfig(inner_steps=8, inner_batch=5, replacement=True, tail="shared"),
                shots=2)
    episode = random_episode(shots=2, queries=0, seed=9)
    batches, tail = one_task_batches(maml, episode)
    rows = [rows_of(x, episode.support_x) for x, _ in batches + [tail]]
    assert all(len(set(r)) == 5 for r in rows)       # no repeats inside a draw
    assert len({tuple(sorted(r)) for r in rows}) > 1  # but draws differ


def test_shared_tail_first_order_gradient_is_the_tail_gradient_after_minibatch_steps():
    cfg = MAMLConfig(inner_steps=2, inner_batch=3, inner_lr=0.3, tail="shared", first_order=True)
    maml = MAML(tiny_model(), cfg, shots=2, seed=5)
    episode = random_episode(shots=2, queries=0, seed=10)
    analytic = meta_gradient(maml, [episode])

    # Independent unroll: the same stream cycles through the 6 support examples in fresh random
    # orders; batches 1 and 2 are the inner steps, batch 3 (straddling two passes) the tail.
    g = torch.Generator().manual_seed(5 + 7919)
    order = torch.cat([torch.randperm(6, generator=g) for _ in range(2)]).tolist()
    inner, tail = [order[0:3], order[3:6]], order[6:9]
    loss = make_loss(maml.model)
    x, y = episode.support_x, episode.support_y
    adapted = {k: p.detach().clone().requires_grad_(True) for k, p in maml.params.items()}
    for b in inner:
        grads = torch.autograd.grad(loss(adapted, x[b], y[b]), list(adapted.values()))
        adapted = {k: (p - 0.3 * g).detach().requires_grad_(True) for (k, p), g in zip(adapted.items(), grads)}
    expected = torch.autograd.grad(loss(adapted, x[tail], y[tail]), list(adapted.values()))
    torch.testing.assert_close(analytic, flat(expected))


def test_a_shared_tail_needs_no_queries_but_a_separate_one_does():
    with pytest.raises(ValueError, match="train_queries"):
        MAMLConfig(tail="separate", train_queries=0)
    with pytest.raises(ValueError, match="tail"):
        MAMLConfig(tail="both")


def test_without_inner_bn_the_meta_gradient_is_that_of_an_inner_loop_leaving_batch_norm_alone():
    """Finn et al.'s code adapts only the convolutions and the head; batch norm's offsets are
    learned by the outer loop alone. Checked against finite differences of a hand-written inner
    step that skips them."""
    maml = MAML(tiny_model(), MAMLConfig(inner_steps=2, inner_lr=0.3, inner_bn=False), shots=2)
    assert not any(".norm." in n for n in maml.inner_names)
    episode = random_episode(seed=4)
    analytic = meta_gradient(maml, [episode])

    loss = make_loss(maml.model)

    def outer_loss(vector):
        params, offset = {}, 0
        for name, p in maml.params.items():
            params[name] = vector[offset: offset + p.numel()].view_as(p).clone().requires_grad_(True)
            offset += p.numel()
        for _ in range(2):
            grads = torch.autograd.grad(loss(params, episode.support_x, episode.support_y), list(params.values()))
            params = {k: p if ".norm." in k else p - 0.3 * g for (k, p), g in zip(params.items(), grads)}
        return loss(params, episode.query_x, episode.query_y).item()

    theta = flat(p.detach() for p in maml.params.values())
    numeric = torch.empty_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = 1e-6
        numeric[i] = (outer_loss(theta + e) - outer_loss(theta - e)) / 2e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_meta_grad_clip_feeds_adam_the_clamped_meta_gradient():
    cfg = MAMLConfig(inner_steps=1, inner_lr=0.3, meta_lr=0.01, meta_grad_clip=0.002)
    maml = MAML(tiny_model(), cfg, shots=2)
    episodes = [random_episode(seed=5)]
    grad = meta_gradient(maml, episodes)
    assert (grad.abs() > 0.002).any()                      # the clamp has something to do
    expected = adam_step_on_clamped(maml.params.values(), grad, lr=0.01, bound=0.002)

    maml.meta_step(episodes, iteration=0)
    torch.testing.assert_close(flat(p.detach() for p in maml.params.values()), expected)
