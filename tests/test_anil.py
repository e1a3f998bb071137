"""ANIL (Raghu et al. 2020): the inner loop adapts only the head; the body learns in the outer loop."""

from __future__ import annotations

import pytest
import torch

from gbml.algorithms.anil import ANIL, ANILConfig
from gbml.algorithms.core import make_loss
from helpers import adapt_one, flat, random_episode, tiny_model

HEAD = ("classifier.weight", "classifier.bias")


def test_inner_steps_change_only_the_head():
    anil = ANIL(tiny_model(), ANILConfig(inner_lr=0.5, eval_inner_steps=3), shots=2)
    episode = random_episode(seed=1)
    adapted = adapt_one(anil, episode)
    for name, theta in anil.params.items():
        changed = not torch.equal(adapted[name], theta.detach())
        assert changed == (name in HEAD), name


@pytest.mark.parametrize("first_order", [False, True])
def test_the_body_still_receives_an_outer_gradient(first_order):
    anil = ANIL(tiny_model(), ANILConfig(inner_lr=0.5, first_order=first_order), shots=2)
    anil.accumulate_meta_gradient([random_episode(seed=2)])
    body = [p.grad for n, p in anil.params.items() if n not in HEAD]
    assert all(g is not None and g.abs().sum() > 0 for g in body)


def test_meta_gradient_equals_finite_differences_of_head_only_adaptation():
    steps, lr = 2, 0.5
    anil = ANIL(tiny_model(), ANILConfig(inner_steps=steps, inner_lr=lr), shots=2)
    episode = random_episode(seed=3)
    anil.optimizer.zero_grad(set_to_none=True)
    anil.accumulate_meta_gradient([episode])
    analytic = flat(p.grad for p in anil.params.values())

    loss = make_loss(anil.model)
    names = list(anil.params)

    def objective(vector: torch.Tensor) -> float:
        """Query loss after `steps` SGD steps on the head alone (body held fixed)."""
        sizes = [p.numel() for p in anil.params.values()]
        params = {n: v.view_as(anil.params[n]).clone() for n, v in zip(names, vector.split(sizes))}
        for _ in range(steps):
            head = {n: params[n].detach().requires_grad_(True) for n in HEAD}
            grads = torch.autograd.grad(loss({**params, **head}, episode.support_x, episode.support_y),
                                        list(head.values()))
            params.update({n: head[n].detach() - lr * g for n, g in zip(HEAD, grads)})
        return loss(params, episode.query_x, episode.query_y).item()

    theta = flat(p.detach() for p in anil.params.values())
    h = 1e-6
    numeric = torch.tensor([(objective(theta + h * e) - objective(theta - h * e)) / (2 * h)
                            for e in torch.eye(theta.numel(), dtype=theta.dtype)], dtype=theta.dtype)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_a_head_the_model_lacks_is_a_clear_error():
    with pytest.raises(ValueError, match="no parameters under 'fc'"):
        ANIL(tiny_model(), ANILConfig(head="fc"), shots=2)
