"""Reptile's update, checked against independent computations (Nichol et al. 2018)."""

from __future__ import annotations

import copy

import pytest
import torch

from gbml.algorithms.core import make_loss, minibatch_indices
from gbml.algorithms.reptile import Reptile, ReptileConfig
from helpers import adapt_one, flat, random_episode, tiny_model


def weights(algo: Reptile) -> torch.Tensor:
    return flat(p.detach().clone() for p in algo.params.values())


def sgd_trained(model, episode, lr: float, steps: int) -> torch.Tensor:
    """Independent inner loop: torch.optim.SGD on a copy, full-batch steps."""
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(clone.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clone(episode.support_x), episode.support_y).backward()
        opt.step()
    return flat(p.detach() for p in clone.parameters())


def test_sgd_update_is_interpolation_towards_mean_of_task_solutions():
    cfg = ReptileConfig(inner_optimizer="sgd", inner_lr=0.1, inner_iters=3, inner_batch=6,
                        meta_batch=2, meta_step=0.5, meta_step_final=0.5, meta_iters=10)
    algo = Reptile(tiny_model(), cfg, shots=2, seed=0)
    episodes = [random_episode(shots=2, seed=1), random_episode(shots=2, seed=2)]
    phi = weights(algo)
    solutions = [sgd_trained(algo.model, ep, lr=0.1, steps=3) for ep in episodes]

    algo.meta_step(episodes, iteration=0)
    expected = phi + 0.5 * (torch.stack(solutions).mean(0) - phi)
    torch.testing.assert_close(weights(algo), expected)


def test_one_inner_step_equals_joint_training_sgd():
    """With k = 1, Reptile is SGD on the expected task loss with step eps * lr (section 5)."""
    cfg = ReptileConfig(inner_optimizer="sgd", inner_lr=0.2, inner_iters=1, inner_batch=6,
                        meta_batch=3, meta_step=0.7, meta_step_final=0.7, meta_iters=10)
    algo = Reptile(tiny_model(), cfg, shots=2, seed=0)
    episodes = [random_episode(shots=2, seed=s) for s in (1, 2, 3)]
    loss = make_loss(algo.model)
    params = {k: p.detach().clone().requires_grad_(True) for k, p in algo.params.items()}
    joint = sum(loss(params, ep.support_x, ep.support_y) for ep in episodes) / len(episodes)
    grad = flat(torch.autograd.grad(joint, list(params.values())))
    expected = weights(algo) - 0.7 * 0.2 * grad

    algo.meta_step(episodes, iteration=0)
    torch.testing.assert_close(weights(algo), expected)


def test_inner_adam_matches_torch_adam_with_moments_kept_across_tasks():
    """The reference code resets the weights after each task but not Adam's moments."""
    cfg = ReptileConfig(inner_lr=0.01, inner_iters=2, inner_batch=6, meta_batch=2,
                        meta_step=1.0, meta_step_final=1.0, meta_iters=10)
    algo = Reptile(tiny_model(), cfg, shots=2, seed=0)
    episodes = [random_episode(shots=2, seed=s) for s in (1, 2)]
    reference = copy.deepcopy(algo.model)
    initial = copy.deepcopy(reference.state_dict())
    opt = torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    solutions = []
    for ep in episodes:
        reference.load_state_dict(initial)          # weights reset, optimizer state kept
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(reference(ep.support_x), ep.support_y).backward()
            opt.step()
        solutions.append(flat(p.detach().clone() for p in reference.parameters()))

    algo.meta_step(episodes, iteration=0)
    torch.testing.assert_close(weights(algo), torch.stack(solutions).mean(0))
    assert algo.adam_state["step"] == 4
    ref_sq = flat(opt.state[p]["exp_avg_sq"] for p in reference.parameters())
    torch.testing.assert_close(flat(algo.adam_state["exp_avg_sq"].values()), ref_sq)


@pytest.mark.parametrize("mode", ["carried", "fresh"])
def test_evaluation_adaptation_leaves_training_state_untouched(mode):
    algo = Reptile(tiny_model(), ReptileConfig(eval_adam_state=mode, eval_inner_iters=5), shots=2, seed=0)
    algo.meta_step([random_episode(shots=2, seed=1)], iteration=0)
    phi = weights(algo)
    moments = flat(algo.adam_state["exp_avg_sq"].values()).clone()
    step = algo.adam_state["step"]
    ep = random_episode(shots=2, seed=9)
    adapted = adapt_one(algo, ep, torch.Generator().manual_seed(0))
    assert torch.equal(weights(algo), phi)
    assert torch.equal(flat(algo.adam_state["exp_avg_sq"].values()), moments)
    assert algo.adam_state["step"] == step
    assert not torch.equal(flat(adapted.values()), phi)


def test_carried_and_fresh_adam_states_adapt_differently():
    algo = Reptile(tiny_model(), ReptileConfig(eval_inner_iters=3), shots=2, seed=0)
    for i in range(3):
        algo.meta_step([random_episode(shots=2, seed=i)], iteration=i)
    ep = random_episode(shots=2, seed=9)
    carried = adapt_one(algo, ep, torch.Generator().manual_seed(0))
    fresh = Reptile(algo.model, ReptileConfig(eval_inner_iters=3, eval_adam_state="fresh"), shots=2, seed=0)
    assert not torch.allclose(flat(carried.values()),
                              flat(adapt_one(fresh, ep, torch.Generator().manual_seed(0)).values()))


def test_meta_step_size_is_linearly_annealed():
    algo = Reptile(tiny_model(), ReptileConfig(meta_step=1.0, meta_step_final=0.0, meta_iters=100), shots=1, seed=0)
    assert [algo.meta_step_size(i) for i in (0, 50, 99)] == pytest.approx([1.0, 0.5, 0.01])


def test_minibatches_cycle_through_every_example_before_repeating():
    g = torch.Generator().manual_seed(0)
    batches = minibatch_indices(50, 10, 5, replacement=False, generator=g)
    assert sorted(torch.cat(batches).tolist()) == list(range(50))
    straddling = torch.cat(minibatch_indices(5, 3, 4, replacement=False, generator=g))
    assert sorted(straddling[:5].tolist()) == list(range(5))  # first pass complete before the second


def test_minibatches_with_replacement_are_independent_draws_without_duplicates():
    batches = minibatch_indices(10, 4, 20, replacement=True, generator=torch.Generator().manual_seed(0))
    assert all(len(set(b.tolist())) == 4 for b in batches)


def test_serial_version_moves_phi_after_each_task():
    """Algorithm 1: phi <- phi + eps (W(phi) - phi), task after task."""
    cfg = ReptileConfig(inner_optimizer="sgd", inner_lr=0.1, inner_iters=3, inner_batch=6, serial=True,
                        meta_batch=2, meta_step=0.5, meta_step_final=0.5, meta_iters=10)
    algo = Reptile(tiny_model(), cfg, shots=2, seed=0)
    episodes = [random_episode(shots=2, seed=1), random_episode(shots=2, seed=2)]
    reference = copy.deepcopy(algo.model)
    for ep in episodes:
        phi = flat(p.detach() for p in reference.parameters())
        target = phi + 0.5 * (sgd_trained(reference, ep, lr=0.1, steps=3) - phi)
        torch.nn.utils.vector_to_parameters(target, reference.parameters())

    algo.meta_step(episodes, iteration=0)
    torch.testing.assert_close(weights(algo), flat(p.detach() for p in reference.parameters()))


def test_outer_adam_takes_phi_minus_mean_solution_as_its_gradient():
    cfg = ReptileConfig(inner_optimizer="sgd", inner_lr=0.1, inner_iters=3, inner_batch=6,
                        outer_optimizer="adam", meta_batch=2, meta_step=0.01, meta_step_final=0.0,
                        meta_iters=4)
    algo = Reptile(tiny_model(), cfg, shots=2, seed=0)
    reference = copy.deepcopy(algo.model)
    adam = torch.optim.Adam(reference.parameters(), lr=0.01)
    for it in range(3):
        episodes = [random_episode(shots=2, seed=10 * it + s) for s in (1, 2)]
        phi = flat(p.detach() for p in reference.parameters())
        mean_w = torch.stack([sgd_trained(reference, ep, lr=0.1, steps=3) for ep in episodes]).mean(0)
        for p, g in zip(reference.parameters(), (phi - mean_w).split([q.numel() for q in reference.parameters()])):
            p.grad = g.view_as(p).clone()
        adam.param_groups[0]["lr"] = 0.01 * (1 - it / 4)  # eps, linearly annealed to 0
        adam.step()
        algo.meta_step(episodes, iteration=it)
        torch.testing.assert_close(weights(algo), flat(p.detach() for p in reference.parameters()))
