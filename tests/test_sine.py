"""The sine-wave regression study (Finn et al. 2017 section 5.1; Nichol et al. 2018 section 3)."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch

from gbml.data.sine import SineTaskSampler
from gbml.models.mlp import MLP
from gbml.sine import (RANDOM_INIT, SineStudyConfig, build_model, meta_train, post_adaptation_mse,
                       run_sine_study, sample_test_tasks, sgd_adaptation)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(**overrides) -> SineStudyConfig:
    values = dict(maml_iters=3, maml_meta_batch=2, reptile_iters=5, test_tasks=6, eval_steps=4,
                  figure_tasks=1, figure_steps=(0, 2, 4))
    return SineStudyConfig(**{**values, **overrides})


# --- task sampler ---------------------------------------------------------------------------

def test_tasks_are_a_sin_x_plus_b_with_the_papers_ranges():
    sampler = SineTaskSampler(shots=10, queries=15, seed=0)
    tasks = [sampler.sample_task() for _ in range(500)]
    amplitudes = torch.tensor([t.amplitude for t in tasks])
    phases = torch.tensor([t.phase for t in tasks])
    inputs = torch.cat([torch.cat([t.episode.support_x, t.episode.query_x]) for t in tasks])
    assert 0.1 <= amplitudes.min() and amplitudes.max() <= 5.0
    assert 0.0 <= phases.min() and phases.max() <= 2 * math.pi
    assert -5.0 <= inputs.min() and inputs.max() <= 5.0
    # The draws fill the ranges: the phase covers [0, 2 pi] (Nichol et al.), not Finn et al.'s [0, pi].
    assert amplitudes.min() < 0.3 and amplitudes.max() > 4.8
    assert phases.min() < 0.2 and phases.max() > 2 * math.pi - 0.2
    assert inputs.min() < -4.9 and inputs.max() > 4.9
    for t in tasks[:20]:
        ep = t.episode
        torch.testing.assert_close(ep.support_y, t.amplitude * torch.sin(ep.support_x + t.phase))
        torch.testing.assert_close(ep.query_y, t.amplitude * torch.sin(ep.query_x + t.phase))


def test_episode_shapes_are_points_by_one():
    ep = SineTaskSampler(shots=10, queries=7, seed=0).sample()
    assert ep.support_x.shape == ep.support_y.shape == (10, 1)
    assert ep.query_x.shape == ep.query_y.shape == (7, 1)
    assert ep.support_x.dtype == ep.support_y.dtype == torch.float32
    assert SineTaskSampler(shots=50, queries=0, seed=0).sample().query_x.shape == (0, 1)


def test_grid_queries_are_equally_spaced_over_the_input_interval():
    ep = SineTaskSampler(shots=10, queries=50, seed=0, query_grid=True).sample()
    torch.testing.assert_close(ep.query_x[:, 0], torch.linspace(-5, 5, 50))


def test_same_seed_gives_the_same_tasks_other_seed_does_not():
    def stream(seed):
        sampler = SineTaskSampler(shots=10, queries=10, seed=seed)
        return [sampler.sample_task() for _ in range(5)]

    a, b, c = stream(3), stream(3), stream(4)
    assert [(t.amplitude, t.phase) for t in a] == [(t.amplitude, t.phase) for t in b]
    assert all(torch.equal(s.episode.support_x, t.episode.support_x) for s, t in zip(a, b))
    assert [(t.amplitude, t.phase) for t in a] != [(t.amplitude, t.phase) for t in c]


def test_sampler_resumes_from_its_state():
    sampler = SineTaskSampler(shots=10, queries=10, seed=0)
    sampler.sample()
    state = sampler.state_dict()
    expected = sampler.sample_task()
    sampler.load_state_dict(state)
    assert sampler.sample_task().amplitude == expected.amplitude


# --- model ----------------------------------------------------------------------------------

def test_mlp_is_1_64_64_1_and_maps_n_by_1_to_n_by_1():
    model = MLP()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(64, 1), (64,), (64, 64), (64,), (1, 64), (1,)]
    assert model(torch.zeros(13, 1)).shape == (13, 1)
    assert isinstance(model.net[1], torch.nn.Tanh)
    assert isinstance(MLP(hidden=40, activation="relu").net[1], torch.nn.ReLU)  # Finn et al.'s
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="sigmoid")


def test_the_initialisation_depends_on_the_seed_only_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    a, b = build_model(SineStudyConfig(seed=0)), build_model(SineStudyConfig(seed=0))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_model(SineStudyConfig(seed=1))
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


# --- test-time adaptation -------------------------------------------------------------------

def test_test_time_adaptation_is_plain_full_batch_sgd_on_the_support_set():
    """The batched (vmap) adaptation equals torch.optim.SGD on a copy of the model, task by task."""
    cfg = SineStudyConfig(test_tasks=3, shots=5, eval_query_points=9)
    model = build_model(cfg).double()
    init = {k: p.detach() for k, p in model.named_parameters()}
    tasks = sample_test_tasks(cfg)
    stack = lambda attr: torch.stack([getattr(t.episode, attr).double() for t in tasks])  # noqa: E731
    preds = sgd_adaptation(model, init, stack("support_x"), stack("support_y"), stack("query_x"), 0.05, 4)
    assert preds.shape == (3, 5, 9, 1)
    for i, task in enumerate(tasks):
        clone = copy.deepcopy(model)
        opt = torch.optim.SGD(clone.parameters(), lr=0.05)
        ep = task.episode
        for step in range(5):
            torch.testing.assert_close(preds[i, step], clone(ep.query_x.double()).detach())
            opt.zero_grad()
            torch.nn.functional.mse_loss(clone(ep.support_x.double()), ep.support_y.double()).backward()
            opt.step()


@pytest.mark.slow
def test_a_short_maml_meta_training_adapts_better_than_the_random_initialisation():
    cfg = SineStudyConfig(maml_iters=200, maml_meta_batch=10, test_tasks=50, algorithms=("maml",))
    learned, summary = meta_train("maml", cfg, progress=False)
    model = build_model(cfg)
    tasks = sample_test_tasks(cfg)
    maml = post_adaptation_mse(model, learned, tasks, cfg.eval_lr, 5).mean(0)
    random = post_adaptation_mse(model, dict(model.named_parameters()), tasks, cfg.eval_lr, 5).mean(0)
    assert summary["tasks_seen"] == 2000
    assert maml[5] < maml[0]                 # it adapts
    assert maml[5] < 0.8 * random[5]         # and from a better starting point than chance


# --- the study ------------------------------------------------------------------------------

def test_config_refuses_unknown_keys_and_inconsistent_values():
    assert SineStudyConfig.from_dict({"algorithms": ["maml"], "figure_steps": [0, 8]}).algorithms == ("maml",)
    with pytest.raises(ValueError, match="maml_iter"):
        SineStudyConfig.from_dict({"maml_iter": 10})
    with pytest.raises(ValueError, match="algorithms"):
        SineStudyConfig(algorithms=("anil",))
    with pytest.raises(ValueError, match="figure_steps"):
        SineStudyConfig(eval_steps=16)  # the default figure shows step 32


@pytest.mark.slow
def test_study_writes_complete_outputs_atomically_and_deterministically(tmp_path):
    threads = torch.get_num_threads()
    cfg = tiny_config()
    metrics = run_sine_study(cfg, tmp_path / "a", progress=False)
    run_sine_study(cfg, tmp_path / "b", progress=False)

    out = tmp_path / "a"
    assert sorted(p.name for p in out.iterdir()) == [
        "adaptation.png", "curves.csv", "metrics.json", "mse_vs_steps.png", "per_task.csv"]
    assert torch.get_num_threads() == threads
    for name in ("adaptation.png", "mse_vs_steps.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["config"]["algorithms"] == ["maml", "fomaml", "reptile", "pretrain"]

    labels = ["maml", "fomaml", "reptile", "pretrain", RANDOM_INIT]
    assert list(metrics["algorithms"]) == labels
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == len(labels) * (cfg.eval_steps + 1)
    for row in rows:
        entry = metrics["algorithms"][row["algorithm"]]
        assert float(row["mse_mean"]) == pytest.approx(entry["mse_mean"][int(row["steps"])], rel=1e-5)
        assert float(row["mse_ci95"]) > 0 and int(row["num_tasks"]) == cfg.test_tasks
    per_task = list(csv.DictReader((out / "per_task.csv").open()))
    assert len(per_task) == len(labels) * cfg.test_tasks
    assert metrics["algorithms"][RANDOM_INIT]["tasks_seen"] == 0
    for name in ("maml", "pretrain"):   # the baseline pools the points of MAML's tasks
        assert metrics["algorithms"][name]["tasks_seen"] == cfg.maml_iters * cfg.maml_meta_batch

    # Same seed, same results (timings aside).
    assert (tmp_path / "b" / "per_task.csv").read_bytes() == (out / "per_task.csv").read_bytes()
    assert (tmp_path / "b" / "curves.csv").read_bytes() == (out / "curves.csv").read_bytes()


def test_every_algorithm_is_scored_on_the_same_test_tasks_from_the_same_initialisation(tmp_path):
    """With no meta-training at all (one Reptile step of size 0), Reptile's curve is the random
    initialisation's, task by task: same init, same tasks, same test-time SGD."""
    cfg = tiny_config(algorithms=("reptile",), reptile_iters=1, reptile_meta_step=0.0, figure_tasks=0)
    run_sine_study(cfg, tmp_path, progress=False)
    rows = list(csv.DictReader((tmp_path / "per_task.csv").open()))
    curves = {name: [[r[k] for k in r if k.startswith("mse_")] for r in rows if r["algorithm"] == name]
              for name in ("reptile", RANDOM_INIT)}
    assert curves["reptile"] == curves[RANDOM_INIT]
    assert not (tmp_path / "adaptation.png").exists()
