"""The batched engine (every task of a meta-batch at once, each layer one grouped computation over
per-task parameters: ``forward_tasks``) gives the serial reference engine's updates, for every
algorithm, in float64.

Each case builds two copies of an algorithm from the same model and seed, one per engine, runs
the same meta-iterations on the same episodes and compares the parameters (and any other
meta-learned state) afterwards, then compares test-time adaptation and prediction.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gbml.algorithms.anil import ANIL, ANILConfig
from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.algorithms.mamlpp import MAMLPlusPlus, MAMLPlusPlusConfig
from gbml.algorithms.reptile import Reptile, ReptileConfig
from gbml.data.tasks import EpisodeSampler, stack_tasks, task_list
from gbml.evaluate import chunk_size, ensemble_logits, evaluate
from gbml.models.conv4 import Conv4
from gbml.models.mlp import MLP
from helpers import flat, random_episode, tiny_model

EPISODES = [random_episode(shots=2, queries=2, seed=s) for s in range(4)]


def per_task_parameters(model, n_tasks, seed=0):
    """``model``'s parameters for ``n_tasks`` tasks, each perturbed differently."""
    g = torch.Generator().manual_seed(seed)
    return {k: p.detach() + 0.1 * torch.randn(n_tasks, *p.shape, generator=g, dtype=p.dtype)
            for k, p in model.named_parameters()}


@pytest.mark.parametrize("kwargs", [
    dict(),                                                              # Omniglot: stride-2 blocks
    dict(in_channels=3, image_size=16, downsample="maxpool"),            # Mini-ImageNet: max-pooling
    dict(image_size=10, padding="tensorflow"),                           # TF 'same': 10 -> 5 -> 3 -> 2 -> 1
    dict(in_channels=3, image_size=11, downsample="maxpool", padding="tensorflow"),   # ceil pooling
    dict(head="mean", bn_scale=False, bn_steps=2),                       # Finn's offset-only batch norm
    dict(image_size=16, downsample="maxpool", bn_eps=1e-5, activation="leaky_relu"),  # MAML++'s reference network
    dict(head="mean"), dict(bn_steps=3)])                                # Finn's head; MAML++'s per-step BN
@pytest.mark.parametrize("groups", [(), (4,)])
def test_forward_tasks_equals_the_model_task_by_task(kwargs, groups):
    """Each task under its own parameters, with batch-norm statistics per task (and, with a group
    axis as in non-transductive evaluation, per group), as ``forward`` on that task alone."""
    torch.manual_seed(0)
    model = Conv4(ways=5, hidden=4, **{"image_size": 9, **kwargs}).double()
    params = per_task_parameters(model, 3)
    x = torch.randn(3, *groups, 6, model.blocks[0].conv.in_channels, *(2 * [kwargs.get("image_size", 9)]),
                    dtype=torch.float64)
    out = model.forward_tasks(params, x, step=1)
    assert out.shape == (3, *groups, 6, 5)
    for t in range(3):
        task_params = {k: v[t] for k, v in params.items()}
        expected = torch.func.functional_call(model, task_params, (x[t],), {"step": 1})
        torch.testing.assert_close(out[t], expected, rtol=1e-12, atol=1e-12)


def test_mlp_forward_tasks_equals_the_model_task_by_task():
    model = MLP(hidden=8).double()
    params = per_task_parameters(model, 3)
    x = torch.randn(3, 7, 1, dtype=torch.float64)
    out = model.forward_tasks(params, x)
    for t in range(3):
        torch.testing.assert_close(out[t], torch.func.functional_call(model, {k: v[t] for k, v in params.items()},
                                                                      (x[t],)))


def twins(cls, cfg, model=None, **kwargs):
    model = model or tiny_model()
    return (cls(copy.deepcopy(model), cfg, shots=2, seed=0, engine="serial", **kwargs),
            cls(copy.deepcopy(model), cfg, shots=2, seed=0, engine="batched", **kwargs))


def assert_same_meta_gradient(a, b):
    """The ``.grad`` the last meta-step applied agrees to float64 rounding."""
    ga, gb = (flat(p.grad for p in algo.params.values()) for algo in (a, b))
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12 * ga.abs().max().item())


def assert_same_parameters(a, b, skip_conv_biases=False):
    # Adam divides by the root of the squared gradient, so parameters whose true gradient is zero
    # (convolution biases ahead of batch norm) turn rounding noise into steps of up to ~1e-8: the
    # parameters agree less tightly than the gradients. An outer Adam at Reptile's step size 1
    # amplifies that noise to visible steps, so those biases are left out there.
    names = [n for n in a.params if not (skip_conv_biases and n.endswith("conv.bias"))]
    torch.testing.assert_close(flat(a.params[n] for n in names), flat(b.params[n] for n in names),
                               rtol=1e-6, atol=1e-7)


def run_both(serial, batched, iterations=3, episodes=EPISODES, gradients=True, skip_conv_biases=False):
    for it in range(iterations):
        ms = serial.meta_step(episodes, it)
        mb = batched.meta_step(stack_tasks(episodes), it)
        assert ms.keys() == mb.keys()
        for k in ms:
            assert ms[k] == pytest.approx(mb[k], rel=1e-9, abs=1e-12), k
        if gradients:
            assert_same_meta_gradient(serial, batched)
    assert_same_parameters(serial, batched, skip_conv_biases)


MAML_CASES = {
    "maml-1-step": MAMLConfig(inner_steps=1, inner_lr=0.3, meta_lr=0.01, train_queries=2),
    "maml-3-steps": MAMLConfig(inner_steps=3, inner_lr=0.3, meta_lr=0.01, train_queries=2),
    "fomaml-3-steps": MAMLConfig(inner_steps=3, inner_lr=0.3, meta_lr=0.01, first_order=True, train_queries=2),
    "maml-minibatch-shared-tail": MAMLConfig(inner_steps=2, inner_lr=0.3, meta_lr=0.01, inner_batch=3,
                                             tail="shared", train_queries=2),
    "maml-minibatch-replacement": MAMLConfig(inner_steps=2, inner_lr=0.3, meta_lr=0.01, inner_batch=2,
                                             replacement=True, train_queries=2),
}


@pytest.mark.parametrize("case", MAML_CASES)
def test_maml_batched_equals_serial(case):
    run_both(*twins(MAML, MAML_CASES[case]))


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_batched_equals_serial(first_order):
    cfg = ANILConfig(inner_steps=2, inner_lr=0.3, meta_lr=0.01, first_order=first_order, train_queries=2)
    run_both(*twins(ANIL, cfg))


def mamlpp_twins(**overrides):
    base = dict(inner_steps=2, eval_inner_steps=2, inner_lr=0.3, meta_lr=0.01, min_meta_lr=0.001,
                iters_per_epoch=1, meta_iters=6, msl_epochs=2, first_order_epochs=1, train_queries=2)
    cfg = MAMLPlusPlusConfig(**{**base, **overrides})
    torch.manual_seed(0)
    model = Conv4(ways=3, in_channels=1, image_size=8, hidden=3, bn_steps=cfg.bn_steps).double()
    return twins(MAMLPlusPlus, cfg, model)


def assert_same_learning_rates(a, b):
    torch.testing.assert_close(flat(a.inner_lrs.values()), flat(b.inner_lrs.values()), rtol=1e-6, atol=1e-7)
    ga, gb = (flat(r.grad for r in algo.inner_lrs.values()) for algo in (a, b))
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12 * ga.abs().max().item())


@pytest.mark.parametrize("switches", [
    {},                                              # all five on: MSL, LSLR, per-step BN, DA, CA
    {"da": False},                                   # second order from the start
    {"per_step_bn": False, "inner_loop_bn_params": True},
    {"lslr": False, "msl": False},
])
def test_mamlpp_batched_equals_serial(switches):
    """Over 4 epochs of 1 iteration the schedules move: MSL weights anneal, first order turns
    into second order, the outer learning rate decays."""
    serial, batched = mamlpp_twins(**switches)
    run_both(serial, batched, iterations=4)
    if serial.cfg.lslr:
        assert_same_learning_rates(serial, batched)


def reptile_episodes(n=3, shots=4):
    return [random_episode(shots=shots, queries=0, seed=10 + s) for s in range(n)]


@pytest.mark.parametrize("overrides", [
    {"inner_adam_state": "parallel"},
    {"inner_adam_state": "fresh"},
    {"inner_adam_state": "parallel", "replacement": True},
    {"inner_adam_state": "parallel", "outer_optimizer": "adam"},
    {"inner_adam_state": "fresh", "inner_optimizer": "sgd", "inner_lr": 0.1},
])
def test_reptile_batched_equals_serial(overrides):
    cfg = ReptileConfig(**{"inner_batch": 5, "inner_iters": 4, "inner_lr": 0.01, "meta_iters": 10,
                           "eval_inner_batch": 3, "eval_inner_iters": 5, **overrides})
    serial, batched = twins(Reptile, cfg)
    run_both(serial, batched, iterations=3, episodes=reptile_episodes(), gradients=False,
             skip_conv_biases=cfg.outer_optimizer == "adam")
    for moment in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(flat(serial.adam_state[moment].values()),
                                   flat(batched.adam_state[moment].values()), rtol=1e-9, atol=1e-15)
    assert serial.adam_state["step"] == batched.adam_state["step"]


def test_reptile_parallel_state_is_the_mean_of_the_tasks_states():
    """With ``parallel`` each task starts from the carried state; afterwards the carried state
    is the tasks' average, ``inner_iters`` steps on."""
    cfg = ReptileConfig(inner_batch=5, inner_iters=4, inner_lr=0.01, inner_adam_state="parallel")
    algo = Reptile(tiny_model(), cfg, shots=2, seed=0)
    algo.meta_step(reptile_episodes(1), 0)     # a non-zero carried state to start from
    start, generator = copy.deepcopy(algo.adam_state), copy.deepcopy(algo.generator)
    episodes = reptile_episodes(2)
    ends = []
    for episode in episodes:   # each task alone, from the same start, minibatches in the same order
        state = copy.deepcopy(start)
        algo.inner_loop(algo.params, state, episode.support_x, episode.support_y, 5, 4, generator)
        ends.append(state)
    algo.meta_step(episodes, 1)
    assert algo.adam_state["step"] == start["step"] + 4
    for moment in ("exp_avg", "exp_avg_sq"):
        for k, value in algo.adam_state[moment].items():
            torch.testing.assert_close(value, (ends[0][moment][k] + ends[1][moment][k]) / 2)


@pytest.mark.parametrize("overrides", [{"serial": True, "inner_adam_state": "parallel"}, {}])
def test_batched_engine_refuses_sequential_reptile(overrides):
    with pytest.raises(ValueError, match="batched engine cannot run"):
        Reptile(tiny_model(), ReptileConfig(**overrides), shots=2, seed=0, engine="batched")


EVAL_CASES = {   # float32, as evaluation runs (images arrive as float32)
    "maml": lambda engine: MAML(tiny_model().float(), MAMLConfig(eval_inner_steps=2, inner_lr=0.3), shots=2,
                                engine=engine),
    "anil": lambda engine: ANIL(tiny_model().float(), ANILConfig(eval_inner_steps=2, inner_lr=0.3), shots=2,
                                engine=engine),
    "mamlpp": lambda engine: MAMLPlusPlus(
        Conv4(ways=3, in_channels=1, image_size=8, hidden=3, bn_steps=2),
        MAMLPlusPlusConfig(inner_steps=2, eval_inner_steps=2), shots=2, engine=engine),
    "reptile": lambda engine: Reptile(tiny_model().float(), ReptileConfig(
        eval_inner_batch=3, eval_inner_iters=4, inner_adam_state="parallel"), shots=2, seed=0, engine=engine),
}
MODES = ("transductive", "non_transductive", "nil")


@pytest.mark.parametrize("name", EVAL_CASES)
def test_batched_evaluation_equals_serial(name):
    """Every mode, including non-transductive (one grouped pass for all tasks and queries) and
    NIL, on chunks of 3 tasks, so that several chunks and a ragged last one are exercised."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 1, 8, 8), dtype=torch.uint8)
    serial, batched = EVAL_CASES[name]("serial"), EVAL_CASES[name]("batched")
    batched.model.load_state_dict(serial.model.state_dict())
    tasks = EpisodeSampler(images, 3, 2, 2, seed=5).tasks_at(range(4))
    # Reptile's evaluation minibatches come from each task's own generator, by its index.
    one_by_one = [ensemble_logits([serial], e, 3, (5, [i]), MODES) for i, e in enumerate(task_list(tasks))]
    at_once = ensemble_logits([batched], tasks, 3, (5, range(4)), MODES, batched=True)
    for mode in MODES:
        torch.testing.assert_close(at_once[mode], torch.stack([t[mode] for t in one_by_one]), rtol=1e-4, atol=1e-5)

    chunk_images = 3 * (6 + 6 * 7)    # 3 tasks of 6 support and 6 queries, each with its own support copy
    assert chunk_size(3, 2, 2, MODES, chunk_images) == 3
    a, b = (evaluate(algo, images, 3, 2, 2, num_tasks=7, seed=5, modes=MODES, progress=False,
                     chunk_images=chunk_images) for algo in (serial, batched))
    for mode in MODES:
        np.testing.assert_array_equal(a[mode], b[mode], err_msg=mode)


def test_auto_engine_is_batched_except_where_tasks_chain():
    from gbml.factory import resolve_engine
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for device in (cpu, cuda):
        assert resolve_engine("auto", MAML, MAMLConfig(), device) == "batched"
        assert resolve_engine("auto", MAMLPlusPlus, MAMLPlusPlusConfig(), device) == "batched"
        assert resolve_engine("auto", Reptile, ReptileConfig(), device) == "serial"      # sequential Adam state
        assert resolve_engine("auto", Reptile, ReptileConfig(inner_adam_state="parallel"), device) == "batched"
        assert resolve_engine("serial", MAML, MAMLConfig(), device) == "serial"
    assert resolve_engine("batched", MAML, MAMLConfig(), cpu) == "batched"
    with pytest.raises(ValueError, match="engine must be one of"):
        MAML(tiny_model(), MAMLConfig(), shots=2, engine="vectorised")


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_task_i_of_an_evaluation_does_not_depend_on_chunks_modes_or_how_many_tasks(name):
    """Per-task accuracies pair across runs: task i (its episode and, for Reptile, its
    adaptation's minibatches) is a function of (seed, split, ways, shots, queries, i) only, so the
    chunk size (which the modes and the device's memory decide), the modes scored alongside and the
    number of tasks change nothing about it."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 1, 8, 8), dtype=torch.uint8)
    algo = EVAL_CASES[name]("batched")

    def score(num_tasks, chunk_images, modes=MODES):
        return evaluate(algo, images, 3, 2, 2, num_tasks=num_tasks, seed=5, modes=modes, progress=False,
                        chunk_images=chunk_images)

    one_per_chunk, all_at_once = score(7, 1), score(7, 10 ** 6)
    for mode in MODES:
        np.testing.assert_array_equal(one_per_chunk[mode], all_at_once[mode], err_msg=mode)
    alone = score(7, 3 * 12, modes=("transductive",))      # a chunk of 3 tasks: other modes, other chunks
    np.testing.assert_array_equal(alone["transductive"], all_at_once["transductive"])
    np.testing.assert_array_equal(score(4, 10 ** 6)["nil"], all_at_once["nil"][:4])
    tasks = EpisodeSampler(images, 3, 2, 2, seed=5)
    first, again = tasks.tasks_at([0, 1, 2, 3]), tasks.tasks_at([3, 1])
    assert torch.equal(first.support_x[3], again.support_x[0]) and torch.equal(first.query_x[1], again.query_x[1])
