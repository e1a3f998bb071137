"""Why do first-order meta-learners work? The leading-order expansion of Nichol, Achiam, Schulman
(2018, section 5.1), measured on real tasks.

One task, two disjoint minibatches with losses L1, L2, the initialisation phi, plain SGD at rate
alpha (phi_2 = phi - alpha g_1). With gbar_i = L_i'(phi) and Hbar_i = L_i''(phi), to O(alpha^2):

    FOMAML   g_2 = L_2'(phi_2)       = gbar_2 - alpha Hbar_2 gbar_1
    MAML     d/dphi L_2(phi_2)       = gbar_2 - alpha Hbar_2 gbar_1 - alpha Hbar_1 gbar_2
    Reptile  (phi - phi_3) / alpha   = gbar_1 + gbar_2 - alpha Hbar_2 gbar_1

and over tasks and minibatch order, with AvgGrad = E[gbar] and AvgGradInner = E[Hbar_2 gbar_1]
= E[Hbar_1 gbar_2] = 1/2 d/dphi E[gbar_1 . gbar_2]:

    E[MAML] = AvgGrad - 2 alpha AvgGradInner     E[FOMAML] = AvgGrad - alpha AvgGradInner
    E[Reptile] = 2 AvgGrad - alpha AvgGradInner

The AvgGradInner term raises the inner product of two minibatches' gradients of one task: a step
on one minibatch then helps the other (within-task generalisation). Joint training (k = 1, the
update gbar_1) has only the AvgGrad term.

Per seed (an initialisation of ``model.omniglot``, its own training-split tasks) and in float64,
this measures each update exactly (autograd through the inner step) and the terms (gradients,
Hessian-vector products by double backward); per task and alpha, the error the zeroth-order
prediction leaves (it should shrink as alpha) and the first-order one (as alpha^2); over the
tasks, the coefficients (a, b) of E[update] = a AvgGrad - b alpha AvgGradInner by least squares,
against the paper's (1, 2), (1, 1), (2, 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gbml.errors import ConfigError, Fix, PipelineError
from gbml.io import staged_dir, write_json_atomic, write_text_atomic
from gbml.stats import mean_ci95
from gbml.studies.config import TaylorTermsConfig
from gbml.studies.first_order import not_run_summary

UNIT_FLAGS = ("seed",)   # one measured unit: an initialisation and its tasks
OUTPUTS = ("errors.csv", "expected.csv", "taylor.png", "metrics.json")
ALGORITHMS = ("maml", "fomaml", "reptile")
EXACT = 1e-3   # a remainder this small next to the first-order term: the expansion holds for that task
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
    from tqdm.auto import tqdm

    scaled = (lambda p, x, y: len(y) * loss(p, x, y)) if summed else loss   # summed: the reference's loss
    alignment, errors, sums = [], [], {}
    for task, pair in enumerate(tqdm(tasks, desc="Taylor terms", unit="task", disable=not progress)):
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


def unit_dir(seed: int) -> str:
    return f"seed{seed}"


def task_batches(params: dict, cfg: TaylorTermsConfig, workspace, seed: int):
    """The seed's network (``model.omniglot``, float64) and ``cfg.tasks`` training-split tasks,
    each as two disjoint minibatches of ``cfg.inner_batch``."""
    from gbml.config import section
    from gbml.data.prepared import load_split
    from gbml.data.tasks import EpisodeSampler
    from gbml.factory import build_model, seed_everything
    from gbml.studies.gradient_combinations import disjoint_batches

    seed_everything(seed, int(section(params, "training").get("threads", 0)))
    train = load_split(workspace.prepared("omniglot"), "train")
    model = build_model(dict(section(params, "model", "omniglot")), cfg.ways, tuple(train.images.shape[2:])).double()
    sampler = EpisodeSampler(train.images, cfg.ways, 2 * cfg.inner_batch // cfg.ways, 0, seed=seed)
    generator = torch.Generator().manual_seed(seed + 7919)
    tasks = []
    for _ in range(cfg.tasks):
        task = sampler.sample()
        tasks.append(disjoint_batches(task.support_x.double(), task.support_y, cfg.inner_batch, 2, generator))
    return model, tasks


def measure_unit(params: dict, cfg: TaylorTermsConfig, unit: dict, workspace, measured: Path) -> Path:
    """Measure the expansion at one seed's initialisation into ``measured/seed<S>/``
    (alignment.csv, errors.csv, expected.csv), whole or not at all."""
    from gbml.algorithms.core import make_loss

    seed = int(unit["seed"])
    if seed not in cfg.seeds:
        raise ConfigError(f"studies.taylor_terms.seeds {list(cfg.seeds)} does not include {seed}")
    model, tasks = task_batches(params, cfg, workspace, seed)
    alignment, errors, expected = measure(make_loss(model), dict(model.named_parameters()), tasks, cfg.alphas,
                                          summed=cfg.inner_loss == "sum")
    out = Path(measured) / unit_dir(seed)
    with staged_dir(out) as tmp:
        for name, rows in (("alignment", alignment), ("errors", errors), ("expected", expected)):
            write_text_atomic(tmp / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False))
    return out


MEASURED = ("alignment.csv", "errors.csv", "expected.csv")


def units(cfg: TaylorTermsConfig) -> list[dict]:
    return [{"seed": seed} for seed in cfg.seeds]


def unit_names(params: dict, cfg: TaylorTermsConfig) -> list[str]:
    return [unit_dir(**u) for u in units(cfg)]


def summary_outputs(params: dict, cfg: TaylorTermsConfig) -> tuple[str, ...]:
    return OUTPUTS if cfg.seeds else ("metrics.json",)


def measured_files(params: dict, cfg: TaylorTermsConfig) -> list[str]:
    """The tables ``summarise`` reads, under the measurements' directory."""
    return [f"{unit_dir(**unit)}/{name}" for unit in units(cfg) for name in MEASURED]


def slope(alphas: np.ndarray, errors: np.ndarray) -> float:
    """The least-squares slope of log(error) against log(alpha): 1 for an O(alpha) error, 2 for O(alpha^2)."""
    return float(np.polyfit(np.log(alphas), np.log(errors), 1)[0])


def accurate_up_to(points: list[dict], key: str, tolerance: float) -> float | None:
    """The largest alpha up to which (every smaller alpha included) the mean error stays within
    ``tolerance``; None when even the smallest misses it."""
    within = None
    for point in sorted(points, key=lambda p: p["alpha"]):
        if point[key] > tolerance:
            break
        within = point["alpha"]
    return within


def summary(alignment: pd.DataFrame, errors: pd.DataFrame, expected: pd.DataFrame) -> dict:
    """Per algorithm and alpha, the relative error of each order (mean with its 95% interval over
    seeds x tasks x orders, and median) and the share of task-orders the expansion matches to first
    order; per algorithm, the zeroth order's log-log slope (medians) over the two smallest alphas
    (1: the first-order term is what it misses) and the largest alpha each order stays within 1%
    (means); per algorithm and alpha, the expected update's coefficients (mean and interval over
    seeds); the two minibatch gradients' alignment within a task."""
    per_alpha, validity = {}, {}
    for name, group in errors.groupby("algorithm", sort=False):
        points = []
        for alpha, g in group.groupby("alpha"):
            e0, e1 = mean_ci95(g["error0"]), mean_ci95(g["error1"])
            points.append({"alpha": float(alpha), "error0": e0[0], "error0_ci95": e0[1], "error1": e1[0], "error1_ci95": e1[1],
                           "error0_median": float(g["error0"].median()), "error1_median": float(g["error1"].median()),
                           # Task-orders whose remainder is a thousandth of the first-order term or less: the
                           # expansion holds there (elsewhere the gradient jumped, e.g. as a ReLU switched).
                           "first_order_share": float((g["error1"] <= EXACT * g["error0"]).mean())})
        per_alpha[name] = points
        smallest = sorted(points, key=lambda p: p["alpha"])[:2]
        validity[name] = {"order0_slope": slope(np.array([p["alpha"] for p in smallest]),
                                                np.array([p["error0_median"] for p in smallest])),
                          "order1_within_1pct_up_to": accurate_up_to(points, "error1", 0.01),
                          "order0_within_1pct_up_to": accurate_up_to(points, "error0", 0.01)}
    fitted = {}
    for (name, alpha), g in expected.groupby(["algorithm", "alpha"], sort=False):
        fitted.setdefault(name, []).append({"alpha": float(alpha), "paper_a": float(g["paper_a"].iloc[0]),
                                            "paper_b": float(g["paper_b"].iloc[0]),
                                            **{f"{c}{s}": v for c in ("a", "b", "error0", "error1", "inner_term_norm",
                                                                       "avg_grad_norm")
                                               for s, v in zip(("", "_ci95"), mean_ci95(g[c]))}})
    inner, cosine = mean_ci95(alignment["inner"]), mean_ci95(alignment["cosine"])
    return {"errors": per_alpha, "validity": validity, "expected": fitted,
            "alignment": {"inner": inner[0], "inner_ci95": inner[1], "cosine": cosine[0], "cosine_ci95": cosine[1]}}


def step_metrics(metrics: dict) -> list[tuple[str, float, int]]:
    """MLflow series beyond the summary's scalars: none."""
    return []


def summarise(params: dict, cfg: TaylorTermsConfig, measured: Path, out: Path) -> dict:
    """Gather every seed's measurements into ``out``: errors.csv (per algorithm, alpha and order),
    expected.csv (coefficients), taylor.png and metrics.json; with no seeds in this profile, only
    metrics.json saying the study was not run."""
    out.mkdir(parents=True, exist_ok=True)
    if (skipped := not_run_summary(params, cfg, out, OUTPUTS)) is not None:
        return skipped
    missing = [unit_dir(**u) for u in units(cfg)
               if not all((Path(measured) / unit_dir(**u) / name).is_file() for name in MEASURED)]
    if missing:
        raise PipelineError(f"Taylor terms: no measurements for {', '.join(missing)} in {measured}; measure them "
                            "first", fix=Fix("study", "taylor_terms"))
    tables = [pd.concat([pd.read_csv(Path(measured) / unit_dir(**u) / name).assign(**u) for u in units(cfg)],
                        ignore_index=True) for name in MEASURED]
    from gbml.report.study_figures import taylor_errors
    from gbml.studies.config import study_config

    trained = study_config(params, "gradient_combinations")   # the rate Nichol et al.'s section 6 trains with
    metrics = {"config": dataclasses.asdict(cfg), "ran": True, "trained_alpha": trained.inner_lr, **summary(*tables)}

    table = pd.DataFrame([{"algorithm": name, **p} for name, points in metrics["errors"].items() for p in points])
    write_text_atomic(out / "errors.csv", table.to_csv(index=False, float_format="%.6g"))
    fitted = pd.DataFrame([{"algorithm": name, **p} for name, points in metrics["expected"].items() for p in points])
    write_text_atomic(out / "expected.csv", fitted.to_csv(index=False, float_format="%.6g"))
    taylor_errors(metrics["errors"], cfg, trained.inner_lr, out / "taylor.png")
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
