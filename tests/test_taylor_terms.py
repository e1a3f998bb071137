"""Nichol et al. (2018) section 5.1's expansion, as the Taylor-terms study measures it: the
Hessian-vector products against finite differences, the exact updates against closed forms on
quadratic losses, and the measured errors shrinking as alpha and alpha^2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gbml.studies.config import TaylorTermsConfig
from gbml.studies.taylor_expansion import coefficients, expected_rows, measure, predictions, terms, updates
from gbml.studies.taylor_terms import slope, summarise, summary

def randn(*shape, generator):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)   # the study measures in float64


def quadratic(params, x, y):
    """L(w) = 1/2 w.A w + b.w with A = x (symmetric), b = y: gradient A w + b, Hessian A."""
    w = params["w"]
    return 0.5 * w @ (x @ w) + y @ w


def quadratic_pair(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    def sym():
        m = randn(n, n, generator=g)
        return (m + m.T) / 2
    return [(sym(), randn(n, generator=g)), (sym(), randn(n, generator=g))]


def tiny_net_loss(params, x, y):
    hidden = torch.tanh(x @ params["w1"] + params["b1"])
    return torch.nn.functional.cross_entropy(hidden @ params["w2"], y)


def tiny_net(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = {"w1": randn(4, 8, generator=g) * 0.7, "b1": randn(8, generator=g) * 0.1,
              "w2": randn(8, 3, generator=g) * 0.7}
    batches = [(randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)) for _ in range(2)]
    return params, batches


def grad_at(loss, params, x, y):
    phi = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    return torch.cat([d.reshape(-1) for d in torch.autograd.grad(loss(phi, x, y), list(phi.values()))])


def shifted(params, direction, eps):
    out, i = {}, 0
    for name, p in params.items():
        out[name] = p + eps * direction[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


def test_hessian_vector_products_match_central_differences_of_the_gradient():
    params, batches = tiny_net()
    t, eps = terms(tiny_net_loss, params, batches), 1e-5
    for h, at, along in (("h21", batches[1], t["g1"]), ("h12", batches[0], t["g2"])):
        fd = (grad_at(tiny_net_loss, shifted(params, along, eps), *at)
              - grad_at(tiny_net_loss, shifted(params, along, -eps), *at)) / (2 * eps)
        torch.testing.assert_close(t[h], fd, rtol=1e-6, atol=1e-8)


def test_on_quadratic_losses_the_updates_are_the_closed_forms():
    """With constant Hessians A_i: FOMAML = gbar_2 - alpha A_2 gbar_1 and Reptile = gbar_1 + that,
    exactly (the expansion has no remainder); MAML = (I - alpha A_1)(gbar_2 - alpha A_2 gbar_1)."""
    (a1, b1), (a2, b2) = batches = quadratic_pair(0)
    w = randn(6, generator=torch.Generator().manual_seed(1))
    alpha, g1, g2 = 0.1, a1 @ w + b1, a2 @ w + b2
    u = updates(quadratic, {"w": w}, batches, alpha)
    fomaml = g2 - alpha * a2 @ g1
    torch.testing.assert_close(u["fomaml"], fomaml)
    torch.testing.assert_close(u["reptile"], g1 + fomaml)
    torch.testing.assert_close(u["maml"], (torch.eye(6, dtype=torch.float64) - alpha * a1) @ fomaml)
    t = terms(quadratic, {"w": w}, batches)
    torch.testing.assert_close(t["h21"], a2 @ g1)
    torch.testing.assert_close(t["h12"], a1 @ g2)
    # What the first-order prediction leaves of MAML is exactly its alpha^2 term.
    torch.testing.assert_close(u["maml"] - predictions(t, alpha, 1)["maml"], alpha ** 2 * a1 @ a2 @ g1)


def test_the_zeroth_order_error_shrinks_as_alpha_and_the_first_order_as_alpha_squared():
    params, batches = tiny_net(3)
    alphas = [1e-3, 3e-3, 1e-2, 3e-2]
    _, errors, _ = measure(tiny_net_loss, params, [batches], alphas, summed=False)
    for name in ("maml", "fomaml", "reptile"):
        rows = [r for r in errors if r["algorithm"] == name and r["order"] == 0]
        assert slope(np.array(alphas), np.array([r["error0"] for r in rows])) == pytest.approx(1, abs=0.1)
        assert slope(np.array(alphas), np.array([r["error1"] for r in rows])) == pytest.approx(2, abs=0.1)


def test_coefficients_recover_a_known_combination():
    g = torch.Generator().manual_seed(0)
    avg_grad, inner = randn(50, generator=g), randn(50, generator=g)
    assert coefficients(1.5 * avg_grad - 0.7 * inner, avg_grad, inner) == pytest.approx((1.5, 0.7))


def test_over_both_minibatch_orders_the_expected_updates_have_the_papers_coefficients():
    """Quadratic tasks, each pair taken in both orders (the expectation over order): E[FOMAML] =
    AvgGrad - alpha AvgGradInner and E[Reptile] = 2 AvgGrad - alpha AvgGradInner exactly; E[MAML] =
    AvgGrad - 2 alpha AvgGradInner + O(alpha^2)."""
    tasks = [pair for seed in range(5) for pair in (quadratic_pair(seed), quadratic_pair(seed)[::-1])]
    w, alpha = {"w": randn(6, generator=torch.Generator().manual_seed(9))}, 1e-3
    _, _, expected = measure(quadratic, w, tasks, [alpha], summed=False)
    fitted = {r["algorithm"]: (r["a"], r["b"]) for r in expected}
    assert fitted["fomaml"] == pytest.approx((1, 1), abs=1e-8)
    assert fitted["reptile"] == pytest.approx((2, 1), abs=1e-8)
    assert fitted["maml"] == pytest.approx((1, 2), abs=1e-2)
    assert {r["algorithm"]: r["error1"] for r in expected}["fomaml"] < 1e-10


def test_expected_rows_compare_each_algorithm_with_the_paper():
    sums = {"g": torch.ones(3, dtype=torch.float64), "h": torch.zeros(3, dtype=torch.float64) + 0.5}
    for name, (a, b) in {"maml": (1, 2), "fomaml": (1, 1), "reptile": (2, 1)}.items():
        sums[0.1, name] = a * sums["g"] - b * 0.1 * sums["h"] + torch.tensor([0.0, 0.0, 1e-3], dtype=torch.float64)
    rows = expected_rows(sums, 1, [0.1])
    assert [(r["paper_a"], r["paper_b"]) for r in rows] == [(1, 2), (1, 1), (2, 1)]
    assert all(r["error1"] < r["error0"] for r in rows)


def test_the_config_refuses_a_single_rate_and_repeats():
    with pytest.raises(ValueError, match="at least two"):
        TaylorTermsConfig(alphas=(0.001,))
    with pytest.raises(ValueError, match="repeat"):
        TaylorTermsConfig(seeds=(0, 0))


def test_the_summary_counts_the_task_orders_that_follow_the_expansion():
    errors = pd.DataFrame([{"algorithm": "reptile", "alpha": a, "task": t, "order": 0, "error0": e0, "error1": e1}
                           for a, rows in {1e-10: [(1e-8, 1e-14), (1e-8, 1e-14)], 1e-9: [(1e-7, 1e-13), (1e-3, 1e-3)],
                                           1e-3: [(0.5, 0.4), (0.6, 0.5)]}.items()
                           for t, (e0, e1) in enumerate(rows)])
    expected = pd.DataFrame([{"algorithm": "reptile", "alpha": a, "a": 2.0, "b": 1.0, "paper_a": 2, "paper_b": 1,
                              "error0": 0.1, "error1": 0.01, "inner_term_norm": 1.0, "avg_grad_norm": 2.0}
                             for a in (1e-10, 1e-9, 1e-3)])
    alignment = pd.DataFrame({"task": [0, 1], "inner": [1.0, 3.0], "cosine": [0.1, 0.3]})
    s = summary(alignment, errors, expected)
    assert [p["first_order_share"] for p in s["errors"]["reptile"]] == [1.0, 0.5, 0.0]
    assert s["validity"]["reptile"]["order0_slope"] == pytest.approx(np.log10(5.0005e-4 / 1e-8))   # medians
    assert s["validity"]["reptile"]["order1_within_1pct_up_to"] == 1e-9
    assert s["alignment"]["inner"] == 2.0


def test_the_report_states_the_claim_and_what_was_measured(tmp_path):
    from gbml.report.reptile_studies import taylor_section

    measured, out = tmp_path / "studies" / "taylor_terms", tmp_path / "reports" / "studies" / "taylor_terms"
    params, tasks = {}, []
    cfg = TaylorTermsConfig(seeds=(0,), tasks=2, alphas=(1e-11, 1e-10, 0.003))
    for seed in range(2):
        net, batches = tiny_net(seed)
        tasks.append(batches)
    alignment, errors, expected = measure(tiny_net_loss, net, tasks, cfg.alphas, summed=False)
    (measured / "seed0").mkdir(parents=True)
    for name, rows in (("alignment", alignment), ("errors", errors), ("expected", expected)):
        pd.DataFrame(rows).to_csv(measured / "seed0" / f"{name}.csv", index=False)
    summarise(params, cfg, measured, out)
    text = taylor_section(out, tmp_path / "reports")
    assert "E[MAML] = AvgGrad - 2 alpha AvgGradInner" in text
    assert "100% of task-orders match the expansion to first order" in text and "**agrees**" in text
    assert "(1.000, 2.000), paper (1, 2)" in text
    assert "![Taylor expansion](studies/taylor_terms/taylor.png)" in text
