"""Specification of the gradient-combination study (Nichol et al. 2018, section 6.2): its update,
its arms, and what its summary compares."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gbml.algorithms.core import make_loss
from gbml.models.mlp import MLP
from gbml.report.reptile_studies import gradient_combinations_section
from gbml.studies.config import GradientCombinationsConfig, arm_gradients
from gbml.studies.first_order import apply_update, inner_gradients
from gbml.studies.gradient_combinations import disjoint_batches, summarise, summary, unit_names


def setup(seed=0):
    torch.manual_seed(seed)
    model = MLP(4, 3, hidden=8, depth=1, activation="tanh")   # 4-8-3; it has the engine's forward_tasks
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


def test_the_reptile_arm_is_gbml_reptile_with_plain_sgd_a_summed_loss_and_one_task_per_meta_batch():
    """A second implementation: gbml's Reptile (A/B-checked against openai/supervised-reptile) on
    the same task, the same minibatch order and the same step equals the g1 + g2 + g3 arm."""
    from gbml.algorithms.reptile import Reptile, ReptileConfig
    from gbml.data.tasks import Episode

    model, loss, _ = setup()
    x, y = torch.randn(30, 4), torch.arange(3).repeat_interleave(10)
    reptile = Reptile(model, ReptileConfig(meta_iters=4, meta_batch=1, meta_step=0.25, inner_optimizer="sgd",
                                           inner_lr=0.05, inner_loss="sum", inner_batch=10, inner_iters=3,
                                           inner_adam_state="fresh"), shots=10, seed=0)
    phi = {n: p.detach().clone() for n, p in model.named_parameters()}
    reptile.meta_step([Episode(x, y, x[:0], y[:0])], iteration=1)
    expected = {n: p.clone() for n, p in phi.items()}
    batches = disjoint_batches(x, y, 10, 3, torch.Generator().manual_seed(0 + 7919))   # Reptile's minibatch stream
    grads = inner_gradients(loss, {n: p.requires_grad_(True) for n, p in expected.items()}, batches, 0.05, summed=True)
    apply_update(expected, grads, [1, 2, 3], step=reptile.meta_step_size(1) * 0.05)
    for n, p in model.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-6), n


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


def test_a_summed_loss_scales_each_gradient_by_the_minibatch_size_as_the_reference_loss_vector():
    model, loss, batches = setup()
    params = dict(model.named_parameters())
    grads = inner_gradients(loss, params, batches[:1], lr=0.1, summed=True)
    x, y = batches[0]
    summed = torch.autograd.grad(nn.functional.cross_entropy(model(x), y, reduction="sum"), list(params.values()))
    assert all(torch.allclose(grads[0][n], g, atol=1e-5) for n, g in zip(params, summed))


def test_minibatches_are_disjoint_and_arms_are_named_by_their_gradients():
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20)
    batches = disjoint_batches(x, y, 5, 4, torch.Generator().manual_seed(0))
    seen = torch.cat([b[1] for b in batches])
    assert len(seen) == len(set(seen.tolist())) == 20
    with pytest.raises(ValueError, match="need 25 examples"):
        disjoint_batches(x, y, 5, 5, torch.Generator())
    assert arm_gradients("g1_g2_g3_g4") == [1, 2, 3, 4] and arm_gradients("g4") == [4]
    for bad in ("g1_g1", "grad1", "", "g0", "g1+g2", "g2_g1"):
        with pytest.raises(ValueError):
            arm_gradients(bad)


def test_an_arm_up_to_gk_trains_on_k_disjoint_minibatches_as_the_reference_train_shots():
    cfg = GradientCombinationsConfig()
    assert [cfg.train_shots(a) for a in ("g1", "g2", "g1_g2", "g4", "g1_g2_g3_g4")] == [5, 10, 10, 20, 20]
    with pytest.raises(ValueError, match="multiple of ways"):
        GradientCombinationsConfig(inner_batch=24)
    with pytest.raises(ValueError, match="seeds must not repeat"):   # a unit measured twice would count twice
        GradientCombinationsConfig(seeds=(0, 0))
    assert unit_names({}, GradientCombinationsConfig(arms=("g1", "g2"), seeds=(0, 3))) == [
        "g1-seed0", "g1-seed3", "g2-seed0", "g2-seed3"]


def curves(final: dict[str, list[float]]) -> pd.DataFrame:
    """Curve rows of one seed: a shared start at iteration 0 and ``final`` accuracies per task at 10."""
    rows = []
    for arm, accs in final.items():
        rows += [{"arm": arm, "seed": 0, "iteration": 0, "task": t, "accuracy": 0.2} for t in range(len(accs))]
        rows += [{"arm": arm, "seed": 0, "iteration": 10, "task": t, "accuracy": a} for t, a in enumerate(accs)]
    return pd.DataFrame(rows)


def test_the_summary_pairs_each_arm_with_joint_training_and_each_sum_with_its_last_gradient_task_by_task():
    g1, g2, g12 = [0.2, 0.4, 0.4, 0.6], [0.6, 0.8, 0.6, 1.0], [0.8, 0.8, 0.8, 0.8]
    out = summary(curves({"g1": g1, "g2": g2, "g1_g2": g12}), GradientCombinationsConfig())
    assert set(out["differences"]) == {"g2-vs-g1", "g1_g2-vs-g1", "g1_g2-vs-g2"}
    paired = np.subtract(g12, g2)
    assert out["differences"]["g1_g2-vs-g2"]["change"] == pytest.approx(paired.mean())
    assert out["differences"]["g1_g2-vs-g2"]["ci95"] == pytest.approx(1.959963984540054 * paired.std(ddof=1) / 2)
    assert out["final"]["g2"]["accuracy"] == pytest.approx(0.75)
    assert [p["iteration"] for p in out["curves"]["g1"]] == [0, 10]


def test_a_profile_without_seeds_says_the_study_was_not_run_and_the_report_says_so(tmp_path):
    out = tmp_path / "reports" / "studies" / "gradient_combinations"
    metrics = summarise({"profile": "cpu"}, GradientCombinationsConfig(seeds=()), tmp_path / "studies", out)
    assert metrics["ran"] is False and sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    section = gradient_combinations_section(out, tmp_path / "reports")
    assert "not run in this profile" in section and "gbml profile studies" in section
    assert json.loads((out / "metrics.json").read_text())["config"]["seeds"] == []
