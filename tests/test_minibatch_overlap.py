"""Specification of the minibatch-overlap study (Nichol et al. 2018, section 6.3): how each variant
draws its inner minibatches and which gradients its update uses."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gbml.algorithms.core import make_loss
from gbml.report.reptile_studies import minibatch_overlap_section
from gbml.studies.config import MinibatchOverlapConfig
from gbml.studies.first_order import apply_update, inner_gradients
from gbml.studies.minibatch_overlap import minibatches, summarise, summary, tail_split, unit_names, update_indices

CFG = MinibatchOverlapConfig(train_shots=15, tail_shots=5, inner_batch=25, ways=5)


def task():
    """A 5-way task of 15 examples per class, each example's id as its input."""
    y = torch.arange(5).repeat_interleave(15)
    return torch.arange(75.0).unsqueeze(1), y


def ids(batches):
    return [set(x.flatten().long().tolist()) for x, _ in batches]


def test_the_separate_tail_is_tail_shots_held_out_examples_per_class_never_in_an_earlier_minibatch():
    x, y = task()
    for sampling in ("cycle", "replacement"):
        batches = minibatches(x, y, CFG, "foml_separate", sampling, 6, torch.Generator().manual_seed(0))
        *earlier, tail = ids(batches)
        assert len(batches) == 6 and len(tail) == 25
        assert torch.bincount(batches[-1][1], minlength=5).tolist() == [5] * 5
        assert all(not (tail & b) for b in earlier)
    rest, held = tail_split(y, 5, 5)
    assert len(rest) == 50 and sorted(rest.tolist() + held.tolist()) == list(range(75))


def test_a_shared_tail_by_cycling_overlaps_the_earlier_minibatches_only_once_they_pass_the_tasks_examples():
    x, y = task()                                  # 75 examples: 3 minibatches of 25 per pass
    three = ids(minibatches(x, y, CFG, "foml_shared", "cycle", 3, torch.Generator().manual_seed(0)))
    assert not (three[2] & (three[0] | three[1]))  # one pass: disjoint
    four = ids(minibatches(x, y, CFG, "foml_shared", "cycle", 4, torch.Generator().manual_seed(0)))
    assert four[3] <= four[0] | four[1] | four[2]  # a second pass: the last minibatch repeats examples


def test_reptile_sums_every_inner_gradient_and_foml_moves_phi_by_the_last_steps_difference_as_the_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 5))
    x, y = task()
    batches = minibatches(x / 75, y, CFG, "foml_shared", "cycle", 4, torch.Generator().manual_seed(1))
    params = dict(model.named_parameters())
    phi = {n: p.detach().clone() for n, p in params.items()}
    grads = inner_gradients(make_loss(model), params, batches, lr=0.01)
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)          # the reference: real SGD steps, back up before the last
    for i, (bx, by) in enumerate(batches):
        if i == len(batches) - 1:
            last_backup = {n: p.detach().clone() for n, p in model.named_parameters()}
        sgd.zero_grad()
        nn.functional.cross_entropy(model(bx), by).backward()
        sgd.step()
    final = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert update_indices("foml_shared", 4) == update_indices("foml_separate", 4) == [4]
    assert update_indices("reptile", 4) == [1, 2, 3, 4]
    for variant, expected in (("foml_shared", lambda n: phi[n] + 0.5 * (final[n] - last_backup[n])),
                              ("reptile", lambda n: phi[n] + 0.5 * (final[n] - phi[n]))):
        moved = {n: p.clone() for n, p in phi.items()}
        apply_update(moved, grads, update_indices(variant, 4), step=0.5 * 0.01)
        assert all(torch.allclose(moved[n], expected(n), atol=1e-6) for n in phi), variant


def test_the_summary_pairs_the_separate_tail_and_reptile_with_the_shared_tail_task_by_task():
    rows = []
    for variant, accs in (("foml_shared", [0.2, 0.4, 0.6]), ("foml_separate", [0.6, 0.6, 1.0]), ("reptile", [0.4, 0.4, 0.6])):
        rows += [{"variant": variant, "sampling": "cycle", "inner_iters": 4, "seed": 0, "iteration": 10, "task": t,
                  "accuracy": a} for t, a in enumerate(accs)]
    out = summary(pd.DataFrame(rows))
    d = out["differences"]["foml_separate-vs-foml_shared"]["cycle"]["4"]
    assert d["change"] == pytest.approx(np.mean([0.4, 0.2, 0.4]))
    assert set(out["differences"]) == {"foml_separate-vs-foml_shared", "reptile-vs-foml_shared"}
    assert out["final"]["reptile"]["cycle"]["4"]["accuracy"] == pytest.approx(np.mean([0.4, 0.4, 0.6]))


def test_units_and_the_not_run_profile(tmp_path):
    cfg = MinibatchOverlapConfig(variants=("reptile",), samplings=("cycle",), inner_iters=(2, 4), seeds=(0,))
    assert unit_names({}, cfg) == ["reptile-cycle-k2-seed0", "reptile-cycle-k4-seed0"]
    with pytest.raises(ValueError, match="inner_iters"):
        MinibatchOverlapConfig(inner_iters=(1,))
    with pytest.raises(ValueError, match="inner_iters must not repeat"):
        MinibatchOverlapConfig(inner_iters=(4, 4))
    with pytest.raises(ValueError, match="tail_shots"):
        MinibatchOverlapConfig(train_shots=5, tail_shots=5)
    out = tmp_path / "reports" / "studies" / "minibatch_overlap"
    metrics = summarise({}, MinibatchOverlapConfig(seeds=()), tmp_path / "studies", out)
    assert metrics["ran"] is False and [p.name for p in out.iterdir()] == ["metrics.json"]
    assert "not run in this profile" in minibatch_overlap_section(out, tmp_path / "reports")
