"""MAML++ (Antoniou et al. 2019): each switch checked against MAML or an independent computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.algorithms.mamlpp import MAMLPlusPlus, MAMLPlusPlusConfig, msl_weights
from gbml.evaluate import predict_query
from gbml.models.conv4 import Conv4, GroupBatchNorm
from helpers import adam_step_on_clamped, adapt_one, flat, predict_one, random_episode, tiny_model

# Every switch off and every parameter adapted: MAML.
OFF = dict(msl=False, lslr=False, per_step_bn=False, da=False, ca=False, inner_loop_bn_params=True)


def config(**overrides) -> MAMLPlusPlusConfig:
    base = dict(OFF, inner_steps=2, eval_inner_steps=2, inner_lr=0.3, meta_lr=0.01, iters_per_epoch=1)
    return MAMLPlusPlusConfig(**{**base, **overrides})


def tiny(bn_steps: int = 0, seed: int = 0) -> Conv4:
    """``helpers.tiny_model`` with per-step batch norm: the same convolution and head weights."""
    torch.manual_seed(seed)
    return Conv4(ways=3, in_channels=1, image_size=8, hidden=3, bn_steps=bn_steps).double()


def build(cfg: MAMLPlusPlusConfig, seed: int = 0) -> MAMLPlusPlus:
    return MAMLPlusPlus(tiny(cfg.bn_steps, seed), cfg, shots=2)


def meta_gradient(algo, episodes, epoch: int | None = None) -> torch.Tensor:
    """The meta-gradient w.r.t. the initialisation (MAML's or MAML++'s, at ``epoch``)."""
    algo.optimizer.zero_grad(set_to_none=True)
    if epoch is None:
        algo.accumulate_meta_gradient(episodes)
    else:
        algo.accumulate_meta_gradient(episodes, epoch)
    return flat(p.grad for p in algo.params.values())


def norms(model) -> list[GroupBatchNorm]:
    return [m for m in model.modules() if isinstance(m, GroupBatchNorm)]


EPISODES = [random_episode(seed=1), random_episode(seed=2)]


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_with_every_switch_off_mamlpp_is_maml(inner_steps):
    maml = MAML(tiny_model(), MAMLConfig(inner_steps=inner_steps, inner_lr=0.3, meta_lr=0.01,
                                         eval_inner_steps=inner_steps), shots=2)
    plus = build(config(inner_steps=inner_steps, eval_inner_steps=inner_steps))
    for iteration in range(2):
        maml.meta_step(EPISODES, iteration)
        plus.meta_step(EPISODES, iteration)
        for p, q in zip(maml.params.values(), plus.params.values()):
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0)
            torch.testing.assert_close(q, p, rtol=0, atol=0)
    ep = random_episode(seed=3)
    a, b = adapt_one(maml, ep), adapt_one(plus, ep)
    torch.testing.assert_close(predict_one(plus, b, ep.query_x), predict_one(maml, a, ep.query_x), rtol=0, atol=0)


def test_msl_weights_start_uniform_sum_to_one_and_move_to_the_last_step():
    history = [msl_weights(5, epoch, msl_epochs=10) for epoch in range(11)]
    assert history[0] == pytest.approx([0.2] * 5)
    # Decay 1/5/10 per epoch for the early steps; the last step gains what they lose.
    assert history[5] == pytest.approx([0.1] * 4 + [0.6])
    # Early weights stop at 0.03/5.
    assert history[10] == pytest.approx([0.006] * 4 + [0.976])
    for before, after in zip(history, history[1:]):
        assert sum(after) == pytest.approx(1.0)
        assert after[-1] > before[-1] and after[0] < before[0]


def test_after_msl_epochs_only_the_last_steps_query_loss_counts():
    msl, plain = build(config(msl=True, msl_epochs=2)), build(config())
    assert msl.step_weights(0) == pytest.approx([0.5, 0.5])
    assert msl.step_weights(1) == pytest.approx([0.25, 0.75])
    assert msl.step_weights(2) == [0.0, 1.0]
    reference = meta_gradient(plain, EPISODES, epoch=2)
    torch.testing.assert_close(meta_gradient(msl, EPISODES, epoch=2), reference, rtol=0, atol=0)
    assert (meta_gradient(msl, EPISODES, epoch=1) - reference).abs().max() > 1e-4


def multi_step_query_loss(model, theta: dict, rates: dict, episode, weights, per_step_bn: bool) -> float:
    """sum_k w_k L_query(theta_k), theta_{k+1} = theta_k - rates[name][k] * grad L_support(theta_k)
    on the non-batch-norm tensors, unrolled on detached copies (no graph through the loop)."""
    def loss(params, x, y, step):
        return F.cross_entropy(functional_call(model, params, (x,), {"step": step} if per_step_bn else {}), y)
    adapted_names = [n for n in theta if ".norm." not in n]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in theta.items()}
    total = 0.0
    for step, w in enumerate(weights):
        grads = torch.autograd.grad(loss(params, episode.support_x, episode.support_y, step),
                                    [params[n] for n in adapted_names])
        for n, g in zip(adapted_names, grads):
            params[n] = (params[n] - rates[n][step] * g).detach().requires_grad_(True)
        total += w * loss(params, episode.query_x, episode.query_y, step).item()
    return total


@pytest.mark.parametrize("per_step_bn", [False, True])
def test_msl_meta_gradient_equals_finite_differences(per_step_bn):
    """Second order, with learned per-step rates (also differentiated) and BN outside the inner loop."""
    cfg = config(msl=True, msl_epochs=4, lslr=True, per_step_bn=per_step_bn, inner_loop_bn_params=False)
    algo = build(cfg)
    with torch.no_grad():  # distinct per-step rates and BN rows, so a mixed-up index shows
        for rates in algo.inner_lrs.values():
            rates.copy_(torch.tensor([0.3, 0.2], dtype=torch.float64))
        for m in norms(algo.model):
            m.bias.add_(0.1 * torch.randn_like(m.bias))
    episode, epoch = random_episode(seed=4), 1
    weights = algo.step_weights(epoch)
    assert weights == pytest.approx([0.375, 0.625])
    meta_gradient(algo, [episode], epoch)

    tensors = {**{("theta", n): p for n, p in algo.params.items()},
               **{("rate", n): r for n, r in algo.inner_lrs.items()}}
    analytic = flat(t.grad for t in tensors.values())
    vector = flat(t.detach() for t in tensors.values())

    def objective(v: torch.Tensor) -> float:
        parts, offset = {}, 0
        for key, t in tensors.items():
            parts[key] = v[offset: offset + t.numel()].view_as(t)
            offset += t.numel()
        theta = {n: parts[("theta", n)] for n in algo.params}
        rates = {n: parts[("rate", n)] for n in algo.inner_lrs}
        return multi_step_query_loss(algo.model, theta, rates, episode, weights, per_step_bn)

    # Every learning rate and batch-norm coordinate, and a sample of the others.
    offsets = torch.tensor([0] + [t.numel() for t in tensors.values()]).cumsum(0).tolist()
    spans = {key: range(a, b) for key, a, b in zip(tensors, offsets, offsets[1:])}
    always = [i for (kind, name), span in spans.items() if kind == "rate" or ".norm." in name for i in span]
    others = sorted(set(range(vector.numel())) - set(always))
    sample = torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:40].tolist()
    h = 1e-6
    for i in always + [others[j] for j in sample]:
        e = torch.zeros_like(vector)
        e[i] = h
        numeric = (objective(vector + e) - objective(vector - e)) / (2 * h)
        assert analytic[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7), f"coordinate {i}"


def test_lslr_rates_start_at_inner_lr_receive_gradients_and_are_meta_learned():
    algo, plain = build(config(lslr=True)), build(config())
    assert set(algo.inner_lrs) == set(algo.params)
    for rates in algo.inner_lrs.values():
        assert torch.equal(rates, torch.full((2,), 0.3, dtype=torch.float64))
    # Equal rates at the start: the initialisation's meta-gradient is MAML's.
    torch.testing.assert_close(meta_gradient(algo, EPISODES, 0), meta_gradient(plain, EPISODES, 0))
    # A convolution bias followed by batch norm has no effect, and neither has its rate.
    effective = [n for n in algo.inner_lrs if not n.endswith("conv.bias")]
    for name in effective:
        assert (algo.inner_lrs[name].grad.abs() > 1e-6).all(), name
    before = {n: r.detach().clone() for n, r in algo.inner_lrs.items()}
    algo.meta_step(EPISODES, 0)
    for name in effective:
        assert (algo.inner_lrs[name] != before[name]).all(), name


def test_per_step_batch_norm_updates_only_the_steps_running_statistics_and_only_in_training():
    model, x = tiny(bn_steps=3), random_episode(seed=5).support_x
    model(x, step=1)
    for m in norms(model):
        assert m.running_mean.shape == (3, 3)
        assert (m.running_mean[1] != 0).all() and (m.running_var[1] != 1).all()
        assert (m.running_mean[[0, 2]] == 0).all() and (m.running_var[[0, 2]] == 1).all()
    model.eval()
    state = copy.deepcopy(model.state_dict())
    model(x, step=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_per_step_batch_norm_weights_are_separate_per_step():
    model, x = tiny(bn_steps=3), random_episode(seed=5).support_x
    before = [model(x, step=k) for k in range(3)]
    with torch.no_grad():
        norms(model)[0].weight[1] += 0.5
    after = [model(x, step=k) for k in range(3)]
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert not torch.allclose(after[1], before[1])


def test_a_default_conv4_keeps_no_statistics_and_ignores_the_step():
    model, x = tiny(), random_episode(seed=5).support_x
    assert dict(model.named_buffers()) == {}
    assert [p.shape for p in model.parameters()] == [p.shape for p in tiny_model().parameters()]
    assert torch.equal(model(x), model(x, step=2))


def test_neither_training_nor_evaluation_writes_the_per_step_statistics_and_every_step_row_learns():
    """The reference normalises with batch statistics in every phase, so its per-step running
    statistics are never read; the engine keeps the buffers (the checkpoint layout) unwritten."""
    algo = build(config(per_step_bn=True, inner_steps=3, eval_inner_steps=3, inner_loop_bn_params=False))
    state = copy.deepcopy(algo.model.state_dict())
    ep = random_episode(seed=6)
    adapted = adapt_one(algo, ep)
    predict_one(algo, adapted, ep.query_x)
    # BN weights and biases stay out of the inner loop; everything else adapts.
    for name, p in adapted.items():
        assert torch.equal(p, algo.params[name]) == (".norm." in name), name

    algo.meta_step(EPISODES, 0)
    for k, v in algo.model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, state[k]), k
    for m in norms(algo.model):
        assert (m.weight.grad.abs().sum(dim=1) > 0).all()  # every step's row is meta-learned


def test_prediction_uses_the_last_adaptation_steps_batch_norm_in_both_evaluation_modes():
    algo = build(config(per_step_bn=True, inner_steps=3, eval_inner_steps=2))
    with torch.no_grad():
        for m in norms(algo.model):
            m.bias.copy_(torch.randn_like(m.bias))
    ep = random_episode(seed=7)
    adapted = adapt_one(algo, ep)
    with torch.no_grad():
        logits = predict_one(algo, adapted, ep.query_x)
        at_step = [functional_call(algo.model, adapted, (ep.query_x,), {"step": k}) for k in (0, 1)]
        torch.testing.assert_close(logits, at_step[1])
        assert not torch.allclose(logits, at_step[0])
        batched = predict_query(lambda p, x: predict_one(algo, p, x), adapted, ep, "non_transductive")
        loop = torch.stack([predict_one(algo, adapted, torch.cat([ep.support_x, q[None]]))[-1]
                            for q in ep.query_x])
    torch.testing.assert_close(batched, loop)


def test_da_is_first_order_for_first_order_epochs_then_second_order():
    cfg = config(da=True, first_order_epochs=2, iters_per_epoch=3)
    assert [build(cfg).second_order(epoch) for epoch in range(4)] == [False, False, True, True]
    maml = {order: MAML(tiny_model(), MAMLConfig(inner_steps=2, inner_lr=0.3, first_order=order), shots=2)
            for order in (True, False)}
    first, second = meta_gradient(maml[True], EPISODES), meta_gradient(maml[False], EPISODES)
    assert (first - second).abs().max() > 1e-4
    # The last iteration of epoch 1 and the first of epoch 2.
    for iteration, expected in [(5, first), (6, second)]:
        algo = build(cfg)
        algo.meta_step(EPISODES, iteration)  # .grad keeps the meta-gradient it applied
        torch.testing.assert_close(flat(p.grad for p in algo.params.values()), expected, rtol=0, atol=0)


def test_ca_anneals_the_meta_learning_rate_on_a_cosine_from_meta_lr_to_min_meta_lr():
    algo = build(config(ca=True, meta_iters=20, meta_lr=0.01, min_meta_lr=1e-4))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20, eta_min=1e-4)
    for iteration in range(21):
        assert algo.meta_lr_at(iteration) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-7)
        optimizer.step()
        scheduler.step()
    assert algo.meta_lr_at(0) == 0.01 and algo.meta_lr_at(20) == pytest.approx(1e-4)
    assert build(config(meta_iters=20)).meta_lr_at(10) == 0.01  # switched off: constant


def test_meta_step_applies_the_annealed_learning_rate():
    algo = build(config(ca=True, meta_iters=20, meta_lr=0.01, min_meta_lr=1e-4))
    before = flat(p.detach().clone() for p in algo.params.values())
    metrics = algo.meta_step(EPISODES, iteration=7)
    lr, grad = algo.meta_lr_at(7), flat(p.grad for p in algo.params.values())
    assert metrics["meta_lr"] == lr and lr < 0.009
    # Adam's first step moves every coordinate by lr * sign(grad) (up to epsilon).
    moved = grad.abs() > 1e-4
    after = flat(p.detach() for p in algo.params.values())
    torch.testing.assert_close((before - after)[moved], lr * grad.sign()[moved], rtol=1e-3, atol=1e-8)


def test_a_restored_checkpoint_continues_exactly():
    cfg = config(msl=True, msl_epochs=3, lslr=True, per_step_bn=True, inner_loop_bn_params=False,
                 da=True, first_order_epochs=1, ca=True, meta_iters=4)
    run = build(cfg)
    run.meta_step(EPISODES, 0)
    run.meta_step(EPISODES, 1)
    resumed = build(cfg, seed=1)
    resumed.load_state_dict(copy.deepcopy(run.state_dict()))
    run.meta_step(EPISODES, 2)
    resumed.meta_step(EPISODES, 2)
    for key, value in run.state_dict()["model"].items():
        assert torch.equal(resumed.state_dict()["model"][key], value), key
    for name, rates in run.inner_lrs.items():
        assert torch.equal(resumed.inner_lrs[name], rates), name


def test_per_step_parameters_need_a_matching_model_and_trained_evaluation_steps():
    with pytest.raises(ValueError, match="bn_steps=2"):
        MAMLPlusPlus(tiny(), config(per_step_bn=True), shots=2)
    with pytest.raises(ValueError, match="eval_inner_steps"):
        config(lslr=True, inner_steps=2, eval_inner_steps=3)


def test_meta_grad_clip_feeds_adam_the_clamped_meta_gradient():
    """The reference clamps meta-gradient elements to [-10, 10] on Mini-ImageNet before Adam."""
    algo = build(config(meta_grad_clip=0.002))
    episodes = [random_episode(seed=5)]
    grad = meta_gradient(algo, episodes, epoch=0)
    assert (grad.abs() > 0.002).any()
    expected = adam_step_on_clamped(algo.params.values(), grad, lr=0.01, bound=0.002)

    algo.meta_step(episodes, iteration=0)
    torch.testing.assert_close(flat(p.detach() for p in algo.params.values()), expected)
