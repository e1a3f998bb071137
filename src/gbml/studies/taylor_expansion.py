"""The leading-order expansion of Nichol, Achiam, Schulman (2018, section 5.1), computed: the
exact updates of MAML, FOMAML and Reptile after one SGD step of rate alpha, the terms of their
expansion (gradients, Hessian-vector products by double backward), the predictions of order 0
and 1 and their errors, and the coefficients (a, b) of E[update] = a AvgGrad - b alpha
AvgGradInner. ``gbml.studies.taylor_terms`` runs it on real tasks (its docstring has the
derivation) and summarises it."""

from __future__ import annotations

import torch

ALGORITHMS = ("maml", "fomaml", "reptile")
PAPER = {"maml": (1.0, 2.0), "fomaml": (1.0, 1.0), "reptile": (2.0, 1.0)}   # (a, b) in E[u] = a AvgGrad - b alpha AvgGradInner

Params = dict[str, torch.Tensor]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def leaves(params: Params) -> Params:
    return {name: p.detach().requires_grad_(True) for name, p in params.items()}


def terms(loss, params: Params, batches) -> dict[str, torch.Tensor]:
    """At ``params``: gbar_1, gbar_2 and the Hessian-vector products Hbar_2 gbar_1 (``h21``) and
    Hbar_1 gbar_2 (``h12``), each flattened. d/dphi (gbar_2 . c) = Hbar_2 c for a constant c."""
    (x1, y1), (x2, y2) = batches
    phi = leaves(params)
    g1 = torch.autograd.grad(loss(phi, x1, y1), list(phi.values()), create_graph=True)
    g2 = torch.autograd.grad(loss(phi, x2, y2), list(phi.values()), create_graph=True)
    c1, c2 = flat(g1).detach(), flat(g2).detach()
    h21 = torch.autograd.grad(flat(g2) @ c1, list(phi.values()), retain_graph=True)
    h12 = torch.autograd.grad(flat(g1) @ c2, list(phi.values()))
    return {"g1": c1, "g2": c2, "h21": flat(h21).detach(), "h12": flat(h12).detach()}


def updates(loss, params: Params, batches, alpha: float) -> dict[str, torch.Tensor]:
    """Each algorithm's k = 2 update at rate ``alpha``, exactly: MAML differentiates L_2 at
    phi_2 = phi - alpha gbar_1 through the step, FOMAML takes L_2's gradient at phi_2, Reptile
    sums the two steps' gradients."""
    (x1, y1), (x2, y2) = batches
    phi = leaves(params)
    g1 = torch.autograd.grad(loss(phi, x1, y1), list(phi.values()), create_graph=True)
    phi_2 = {name: p - alpha * g for (name, p), g in zip(phi.items(), g1)}
    outer = loss(phi_2, x2, y2)
    g2 = flat(torch.autograd.grad(outer, list(phi_2.values()), retain_graph=True))
    maml = flat(torch.autograd.grad(outer, list(phi.values())))
    return {"maml": maml, "fomaml": g2, "reptile": flat(g1).detach() + g2}


def predictions(t: dict[str, torch.Tensor], alpha: float, order: int) -> dict[str, torch.Tensor]:
    """Section 5.1's expansion of each update to ``order`` (0 or 1) in alpha."""
    zeroth = {"maml": t["g2"], "fomaml": t["g2"], "reptile": t["g1"] + t["g2"]}
    if order == 0:
        return zeroth
    return {"maml": t["g2"] - alpha * (t["h21"] + t["h12"]), "fomaml": t["g2"] - alpha * t["h21"],
            "reptile": t["g1"] + t["g2"] - alpha * t["h21"]}


def relative(error: torch.Tensor, of: torch.Tensor) -> float:
    return (error.norm() / of.norm()).item()


def coefficients(update: torch.Tensor, avg_grad: torch.Tensor, inner_term: torch.Tensor) -> tuple[float, float]:
    """(a, b) minimising |update - (a avg_grad - b inner_term)| (``inner_term`` = alpha AvgGradInner)."""
    basis = torch.stack([avg_grad, -inner_term], dim=1)
    solution = torch.linalg.lstsq(basis, update.unsqueeze(1)).solution.squeeze(1)
    return float(solution[0]), float(solution[1])


def measure(loss, params: Params, tasks, alphas, summed: bool, progress: bool = False):
    """For ``tasks`` ([(x1, y1), (x2, y2)] minibatch pairs), each in both minibatch orders (the
    paper's expectation is over tasks and order): per task, gbar_1 . gbar_2 and their cosine; per
    task, order, alpha and algorithm, the relative error of the zeroth- and first-order
    predictions; per alpha and algorithm, the expected update against the expansion."""
    from gbml.progress import progress as progress_bar

    scaled = (lambda p, x, y: len(y) * loss(p, x, y)) if summed else loss   # summed: the reference's loss
    alignment, errors, sums = [], [], {}
    for task, pair in enumerate(progress_bar(tasks, desc="Taylor terms", unit="task", disable=not progress)):
        for order, batches in enumerate((pair, pair[::-1])):
            t = terms(scaled, params, batches)
            if order == 0:
                alignment.append({"task": task, "inner": (t["g1"] @ t["g2"]).item(),
                                  "cosine": torch.nn.functional.cosine_similarity(t["g1"], t["g2"], dim=0).item()})
            accumulate(sums, "g", t["g1"])     # over both orders: AvgGrad's estimate
            accumulate(sums, "h", t["h21"])    # and AvgGradInner's (h21 of one order is h12 of the other)
            for alpha in alphas:
                exact, p0, p1 = updates(scaled, params, batches, alpha), predictions(t, alpha, 0), predictions(t, alpha, 1)
                for name in ALGORITHMS:
                    accumulate(sums, (alpha, name), exact[name])
                    errors.append({"task": task, "order": order, "alpha": alpha, "algorithm": name,
                                   "error0": relative(exact[name] - p0[name], exact[name]),
                                   "error1": relative(exact[name] - p1[name], exact[name])})
    return alignment, errors, expected_rows(sums, 2 * len(tasks), alphas)


def accumulate(sums: dict, key, value: torch.Tensor) -> None:
    sums[key] = sums[key] + value if key in sums else value.clone()


def expected_rows(sums: dict, n: int, alphas) -> list[dict]:
    avg_grad, avg_inner = sums["g"] / n, sums["h"] / n
    rows = []
    for alpha in alphas:
        for name in ALGORITHMS:
            update, (a, b) = sums[alpha, name] / n, PAPER[name]
            fit_a, fit_b = coefficients(update, avg_grad, alpha * avg_inner)
            rows.append({"alpha": alpha, "algorithm": name, "a": fit_a, "b": fit_b, "paper_a": a, "paper_b": b,
                         "error0": relative(update - a * avg_grad, update),
                         "error1": relative(update - (a * avg_grad - b * alpha * avg_inner), update),
                         "avg_grad_norm": avg_grad.norm().item(), "inner_term_norm": (alpha * avg_inner).norm().item()})
    return rows
