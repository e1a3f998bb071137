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
from gbml.studies.units import grid_units, summary_outputs_from, unit_names_from
from gbml.studies.taylor_expansion import measure

UNIT_FLAGS = ("seed",)   # one measured unit: an initialisation and its tasks
OUTPUTS = ("errors.csv", "expected.csv", "taylor.png", "metrics.json")
EXACT = 1e-3   # a remainder this small next to the first-order term: the expansion holds for that task


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
    return grid_units(seed=cfg.seeds)


unit_names = unit_names_from(units, unit_dir)
summary_outputs = summary_outputs_from(OUTPUTS)


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
