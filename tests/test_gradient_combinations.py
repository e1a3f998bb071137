"""Specification of the gradient-combination study's update (Nichol et al. 2018, section 6.2)."""

import pytest
import torch
from torch import nn

from gbml.algorithms.core import make_loss
from gbml.studies.gradient_combinations import apply_update, disjoint_batches, inner_gradients, parse_arm


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    batches = disjoint_batches(x, y, 10, 4, torch.Generator().manual_seed(1))
    return model, make_loss(model), batches


def test_the_sum_of_all_inner_gradients_is_reptiles_difference_phi_minus_w_over_alpha():
    model, loss, batches = setup()
    phi = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = inner_gradients(loss, dict(model.named_parameters()), batches, lr=0.1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)     # a second implementation: torch's SGD on the module
    for x, y in batches:
        sgd.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        sgd.step()
    for name, w in model.named_parameters():
        assert torch.allclose(sum(g[name] for g in grads), (phi[name] - w.detach()) / 0.1, atol=1e-5)


def test_g1_is_the_joint_training_gradient_at_phi_and_the_last_is_fomamls_gradient_after_k_minus_1_steps():
    model, loss, batches = setup()
    params = dict(model.named_parameters())
    grads = inner_gradients(loss, params, batches, lr=0.1)
    (x1, y1), (xk, yk) = batches[0], batches[-1]
    g1 = torch.autograd.grad(nn.functional.cross_entropy(model(x1), y1), list(params.values()))
    assert all(torch.allclose(grads[0][n], g) for n, g in zip(params, g1))
    with torch.no_grad():                         # k - 1 explicit SGD steps, then the last minibatch's gradient
        for g in grads[:-1]:
            for n, p in params.items():
                p.sub_(0.1 * g[n])
    gk = torch.autograd.grad(nn.functional.cross_entropy(model(xk), yk), list(params.values()))
    assert all(torch.allclose(grads[-1][n], g, atol=1e-6) for n, g in zip(params, gk))


def test_an_arm_moves_phi_by_the_sum_of_its_gradients_only():
    model, loss, batches = setup()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = inner_gradients(loss, params, batches, lr=0.1)
    apply_update(params, grads, [2, 4], step=0.5)
    for n, p in params.items():
        assert torch.allclose(p, before[n] - 0.5 * (grads[1][n] + grads[3][n]))


def test_minibatches_are_disjoint_and_arms_are_named_by_their_gradients():
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20)
    batches = disjoint_batches(x, y, 5, 4, torch.Generator().manual_seed(0))
    seen = torch.cat([b[1] for b in batches])
    assert len(seen) == len(set(seen.tolist())) == 20
    with pytest.raises(ValueError, match="need 25 examples"):
        disjoint_batches(x, y, 5, 5, torch.Generator())
    assert parse_arm("g1+g2+g3+g4", 4) == [1, 2, 3, 4] and parse_arm("g4", 4) == [4]
    for bad in ("g5", "g1+g1", "grad1", ""):
        with pytest.raises(ValueError):
            parse_arm(bad, 4)
