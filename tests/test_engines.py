"""The engine (every task of a stack at once, each layer one grouped computation over per-task
parameters: ``forward_tasks``) gives the serial oracle's updates (``tests/oracle.py``: each task
alone through the model's plain ``forward``), for every algorithm, in float64.

Each case builds two copies of an algorithm from the same model and seed, runs the same
meta-iterations on the same episodes -- one copy by its ``meta_step``, the other by the oracle --
and compares the parameters (and any other meta-learned state) afterwards, then compares
test-time adaptation and prediction.
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
import oracle
from gbml.data.tasks import EpisodeSampler, stack_tasks, task_generators, task_list
from gbml.evaluate import chunk_size, ensemble_logits, evaluate, nil_log_probs, predict_query
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
    for n_tasks in (3, 1):
        params = per_task_parameters(model, n_tasks)
        x = torch.randn(n_tasks, 7, 1, dtype=torch.float64)
        out = model.forward_tasks(params, x)
        for t in range(n_tasks):
            torch.testing.assert_close(out[t], torch.func.functional_call(
                model, {k: v[t] for k, v in params.items()}, (x[t],)))


@pytest.mark.parametrize("kwargs", [dict(), dict(head="mean", bn_scale=False), dict(padding="tensorflow")])
def test_a_stack_of_one_task_is_the_plain_forward_pass_bit_for_bit(kwargs):
    """What lets tasks that chain run as stacks of one without moving a float (Reptile's default,
    trained before the engine was the only one): the same kernels as ``forward``, forwards and
    backwards, in float32."""
    torch.manual_seed(0)
    model = Conv4(ways=5, hidden=8, image_size=12, **kwargs)
    x = torch.rand(10, 1, 12, 12)
    params = {k: v.detach().requires_grad_(True) for k, v in model.named_parameters()}
    plain = torch.func.functional_call(model, params, (x,))
    stacked = model.forward_tasks({k: v[None] for k, v in params.items()}, x[None])[0]
    assert torch.equal(stacked, plain)
    grads = [torch.autograd.grad(out.square().sum(), list(params.values())) for out in (plain, stacked)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def twins(cls, cfg, model=None, **kwargs):
    """Two copies of an algorithm, from the same model and seed: one for the engine, one for the oracle."""
    model = model or tiny_model()
    return (cls(copy.deepcopy(model), cfg, shots=2, seed=0, **kwargs),
            cls(copy.deepcopy(model), cfg, shots=2, seed=0, **kwargs))


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


def run_both(serial, batched, oracle_step, iterations=3, episodes=EPISODES, gradients=True, skip_conv_biases=False):
    """``oracle_step`` on ``serial``, ``meta_step`` on ``batched``, ``iterations`` times."""
    for it in range(iterations):
        ms = oracle_step(serial, episodes, it)
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
def test_maml_engine_equals_the_serial_oracle(case):
    run_both(*twins(MAML, MAML_CASES[case]), oracle.maml_meta_step)


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_engine_equals_the_serial_oracle(first_order):
    cfg = ANILConfig(inner_steps=2, inner_lr=0.3, meta_lr=0.01, first_order=first_order, train_queries=2)
    run_both(*twins(ANIL, cfg), oracle.maml_meta_step)


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
def test_mamlpp_engine_equals_the_serial_oracle(switches):
    """Over 4 epochs of 1 iteration the schedules move: MSL weights anneal, first order turns
    into second order, the outer learning rate decays."""
    serial, batched = mamlpp_twins(**switches)
    run_both(serial, batched, oracle.maml_meta_step, iterations=4)
    if serial.cfg.lslr:
        assert_same_learning_rates(serial, batched)


def reptile_episodes(n=3, shots=4):
    return [random_episode(shots=shots, queries=0, seed=10 + s) for s in range(n)]


@pytest.mark.parametrize("overrides", [
    {},                                          # the reference: one Adam state chained through the tasks
    {"serial": True},                            # Algorithm 1: phi moves after every task
    {"serial": True, "inner_adam_state": "parallel"},
    {"inner_adam_state": "parallel"},
    {"inner_adam_state": "fresh"},
    {"inner_adam_state": "parallel", "replacement": True},
    {"inner_adam_state": "parallel", "outer_optimizer": "adam"},
    {"inner_adam_state": "fresh", "inner_optimizer": "sgd", "inner_lr": 0.1},
])
def test_reptile_engine_equals_the_serial_oracle(overrides):
    cfg = ReptileConfig(**{"inner_batch": 5, "inner_iters": 4, "inner_lr": 0.01, "meta_iters": 10,
                           "eval_inner_batch": 3, "eval_inner_iters": 5, **overrides})
    serial, batched = twins(Reptile, cfg)
    run_both(serial, batched, oracle.reptile_meta_step, iterations=3, episodes=reptile_episodes(), gradients=False,
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
        oracle.reptile_inner_loop(algo, state, episode.support_x, episode.support_y, 5, 4, generator)
        ends.append(state)
    algo.meta_step(episodes, 1)
    assert algo.adam_state["step"] == start["step"] + 4
    for moment in ("exp_avg", "exp_avg_sq"):
        for k, value in algo.adam_state[moment].items():
            torch.testing.assert_close(value, (ends[0][moment][k] + ends[1][moment][k]) / 2)


def test_chained_reptile_runs_its_tasks_one_by_one_and_the_rest_side_by_side():
    assert Reptile(tiny_model(), ReptileConfig(), shots=2, seed=0).engine == "serial"    # sequential Adam state
    assert Reptile(tiny_model(), ReptileConfig(serial=True, inner_adam_state="fresh"), shots=2, seed=0).engine == "serial"
    assert Reptile(tiny_model(), ReptileConfig(inner_adam_state="parallel"), shots=2, seed=0).engine == "batched"
    assert MAML(tiny_model(), MAMLConfig(), shots=2).engine == "batched"


EVAL_CASES = {   # float32, as evaluation runs (images arrive as float32)
    "maml": lambda: MAML(tiny_model().float(), MAMLConfig(eval_inner_steps=2, inner_lr=0.3), shots=2),
    "anil": lambda: ANIL(tiny_model().float(), ANILConfig(eval_inner_steps=2, inner_lr=0.3), shots=2),
    "mamlpp": lambda: MAMLPlusPlus(Conv4(ways=3, in_channels=1, image_size=8, hidden=3, bn_steps=2),
                                   MAMLPlusPlusConfig(inner_steps=2, eval_inner_steps=2), shots=2),
    "reptile": lambda: Reptile(tiny_model().float(), ReptileConfig(eval_inner_batch=3, eval_inner_iters=4),
                               shots=2, seed=0),
}
MODES = ("transductive", "non_transductive", "nil")


def oracle_logits(algo, episode, index: int, seed: int = 5) -> dict[str, torch.Tensor]:
    """One task's query logits in every mode, by the oracle: adapted alone, predicted by the
    plain model (non-transductively one forward pass per query with the support set)."""
    if isinstance(algo, Reptile):
        generator = task_generators(seed, [index], "adaptation")[0]
        adapted = oracle.reptile_adapt(algo, episode.support_x, episode.support_y, generator)
        predict = oracle.reptile_predict(algo)
    else:
        adapted, predict = oracle.maml_adapt(algo, episode.support_x, episode.support_y), oracle.maml_predict(algo)
    one_by_one = torch.stack([predict(adapted, torch.cat([episode.support_x, q[None]]))[-1] for q in episode.query_x])
    return {"transductive": predict_query(predict, adapted, episode, "transductive"),
            "non_transductive": one_by_one, "nil": nil_log_probs(algo.model.features, episode, 3)}


@pytest.mark.parametrize("name", EVAL_CASES)
def test_evaluation_equals_the_serial_oracle(name):
    """Every mode, including non-transductive (one grouped pass for all tasks and queries) and
    NIL, on chunks of 3 tasks, so that several chunks and a ragged last one are exercised."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 1, 8, 8), dtype=torch.uint8)
    algo = EVAL_CASES[name]()
    tasks = EpisodeSampler(images, 3, 2, 2, seed=5).tasks_at(range(7))
    with torch.no_grad():
        expected = [oracle_logits(algo, e, i) for i, e in enumerate(task_list(tasks))]
        at_once = ensemble_logits([algo], tasks, 3, (5, range(7)), MODES)
    for mode in MODES:
        torch.testing.assert_close(at_once[mode], torch.stack([t[mode] for t in expected]), rtol=1e-4, atol=1e-5)

    chunk_images = 3 * (6 + 6 * 7)    # 3 tasks of 6 support and 6 queries, each with its own support copy
    assert chunk_size(3, 2, 2, MODES, chunk_images) == 3
    scored = evaluate(algo, images, 3, 2, 2, num_tasks=7, seed=5, modes=MODES, progress=False,
                      chunk_images=chunk_images)
    for mode in MODES:
        correct = [(t[mode].argmax(-1) == e.query_y).float().mean().item() for t, e in zip(expected, task_list(tasks))]
        np.testing.assert_array_equal(scored[mode], np.array(correct), err_msg=mode)


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_task_i_of_an_evaluation_does_not_depend_on_chunks_modes_or_how_many_tasks(name):
    """Per-task accuracies pair across runs: task i (its episode and, for Reptile, its
    adaptation's minibatches) is a function of (seed, split, ways, shots, queries, i) only, so the
    chunk size (which the modes and the device's memory decide), the modes scored alongside and the
    number of tasks change nothing about it."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 1, 8, 8), dtype=torch.uint8)
    algo = EVAL_CASES[name]()

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
