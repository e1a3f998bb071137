"""Which inner-loop gradients make meta-learning work? (Nichol, Achiam, Schulman 2018, section 6.2,
Figure 3.)

A task's inner loop takes k plain SGD steps on k disjoint minibatches, phi_{i+1} = phi_i - alpha g_i,
g_i the gradient of minibatch i at phi_i. Each arm meta-trains with one combination of them as its
update, phi <- phi - eps * alpha * sum_{i in S} g_i, eps annealed linearly to 0 (the reference's
interpolation): S = {1} is joint training (the gradient at phi itself), {k} alone is first-order
MAML with k steps (the reference's ``--foml``: the last minibatch's gradient after k - 1 steps),
{1..k} is Reptile with k steps (phi - W_k = alpha * sum g_i). As the reference's commands, an arm
whose last gradient is g_k trains on tasks of exactly k x inner_batch examples (``--train-shots
5k``, ``--inner-iters k``), cycled once through in k disjoint minibatches; its averaged arms (1/k
of a sum) are the sums at eps / k, the same direction with a smaller step, and are not run here.

Every arm of a seed starts from the same initialisation and scores its curve on the same held-out
tasks (the test split, adapted as the reference's evaluation: ``eval_inner_iters`` SGD steps of
``eval_inner_batch``), so arms differ only in their update and the comparisons pair task by task.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gbml.algorithms.core import LossFn, Params, minibatch_indices
from gbml.errors import ConfigError, PipelineError
from gbml.io import staged_dir, write_json_atomic, write_text_atomic
from gbml.stats import mean_ci95
from gbml.studies.config import GradientCombinationsConfig, arm_gradients

UNIT_FLAGS = ("arm", "seed")   # one measured unit: an arm trained from one seed
OUTPUTS = ("curves.csv", "final.csv", "curves.png", "metrics.json")


def inner_gradients(loss: LossFn, params: Params, batches, lr: float, scale: float = 1.0) -> list[Params]:
    """g_1..g_k of plain SGD on ``batches`` from ``params``: g_i = scale * grad L_i(phi_i) with
    phi_{i+1} = phi_i - lr * g_i (``scale`` = the minibatch size for a summed loss). Detached: the
    update is first-order by construction."""
    phi = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    grads = []
    for x, y in batches:
        g = {n: scale * d for n, d in zip(phi, torch.autograd.grad(loss(phi, x, y), list(phi.values())))}
        grads.append(g)
        phi = {name: (p - lr * g[name]).detach().requires_grad_(True) for name, p in phi.items()}
    return grads


def disjoint_batches(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int,
                     generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` minibatches of ``batch`` examples, no example in two (the reference's cycling
    sampler over a mini-dataset of exactly ``steps * batch`` examples)."""
    if batch * steps > len(y):
        raise ValueError(f"{steps} disjoint minibatches of {batch} need {batch * steps} examples, the task has {len(y)}")
    return [(x[i], y[i]) for i in (i.to(y.device) for i in minibatch_indices(len(y), batch, steps, False, generator))]


@torch.no_grad()
def apply_update(params: Params, grads: list[Params], arm: list[int], step: float) -> None:
    """phi <- phi - step * sum_{i in arm} g_i, in place (``step`` = eps * alpha)."""
    for name, p in params.items():
        p.sub_(step * sum(grads[i - 1][name] for i in arm))


def meta_step_size(cfg: GradientCombinationsConfig, iteration: int) -> float:
    frac = iteration / cfg.meta_iters
    return frac * cfg.meta_step_final + (1 - frac) * cfg.meta_step


def meta_train_arm(model, arm: list[int], cfg: GradientCombinationsConfig, train, curve,
                   generator: torch.Generator, progress: bool = False) -> list[tuple[int, np.ndarray]]:
    """Meta-train ``model`` in place with ``arm``'s update on ``train``'s tasks (an
    ``EpisodeSampler`` of ``max(arm) * inner_batch / ways`` shots, no queries); ``curve(model)``
    scores it every ``cfg.eval_every`` iterations, at 0 and at the end. Returns [(iteration, scores)]."""
    from tqdm.auto import tqdm

    from gbml.algorithms.core import make_loss

    loss, params = make_loss(model), dict(model.named_parameters())
    scale = cfg.inner_batch if cfg.inner_loss == "sum" else 1.0
    points = [(0, curve())]
    label = "+".join(f"g{i}" for i in arm)
    for iteration in tqdm(range(cfg.meta_iters), desc=f"arm {label}", disable=not progress, mininterval=2):
        task = train.sample()
        batches = disjoint_batches(task.support_x, task.support_y, cfg.inner_batch, max(arm), generator)
        grads = inner_gradients(loss, params, batches, cfg.inner_lr, scale)
        apply_update(params, grads, arm, meta_step_size(cfg, iteration) * cfg.inner_lr)
        done = iteration + 1
        if done % cfg.eval_every == 0 or done == cfg.meta_iters:
            points.append((done, curve()))
    return points


def evaluator(model, cfg: GradientCombinationsConfig, seed: int):
    """A Reptile learner around ``model`` that adapts as the reference evaluates (plain SGD at
    ``inner_lr``, ``eval_inner_iters`` minibatches of ``eval_inner_batch``, the loss as in
    training); only its ``adapt`` is used, with ``gbml.evaluate.evaluate``."""
    from gbml.algorithms.reptile import Reptile, ReptileConfig

    reptile = ReptileConfig(meta_iters=cfg.meta_iters, meta_batch=1, inner_optimizer="sgd", inner_lr=cfg.inner_lr,
                            inner_loss=cfg.inner_loss, inner_batch=cfg.inner_batch,
                            eval_inner_batch=cfg.eval_inner_batch, eval_inner_iters=cfg.eval_inner_iters,
                            eval_adam_state="fresh", inner_adam_state="fresh")
    return Reptile(model, reptile, cfg.shots, seed, engine="batched")


def unit_dir(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def measure_unit(params: dict, cfg: GradientCombinationsConfig, unit: dict, workspace, measured: Path) -> Path:
    """Train one arm from one seed on Omniglot's training split and write its held-out curve
    (``curve.csv``: iteration x task accuracy) to ``measured/<arm>-seed<seed>/``, whole or not at all."""
    from gbml.config import section
    from gbml.data.prepared import load_split
    from gbml.data.tasks import EpisodeSampler
    from gbml.evaluate import evaluate
    from gbml.factory import build_model, resolve_device, seed_everything

    arm, seed = unit["arm"], int(unit["seed"])
    if arm not in cfg.arms:
        raise ConfigError(f"studies.gradient_combinations.arms {list(cfg.arms)} does not include {arm!r}")
    training = section(params, "training")
    seed_everything(seed, int(training.get("threads", 0)))
    device = resolve_device(training.get("device", "auto"))
    train = load_split(workspace.prepared("omniglot"), "train")   # rotations as prepared (Nichol et al. too)
    test = load_split(workspace.prepared("omniglot"), "test")
    model = build_model(dict(section(params, "model", "omniglot")), cfg.ways, tuple(train.images.shape[2:])).to(device)
    sampler = EpisodeSampler(train.images.to(device), cfg.ways, cfg.train_shots(arm), 0, seed=seed)
    scorer, test_images = evaluator(model, cfg, seed), test.images.to(device)

    def curve() -> np.ndarray:
        return evaluate(scorer, test_images, cfg.ways, cfg.shots, cfg.eval_queries, cfg.eval_tasks, cfg.eval_seed,
                        modes=(cfg.eval_mode,), progress=False)[cfg.eval_mode]

    generator = torch.Generator().manual_seed(seed + 7919)   # minibatch order: its own stream
    points = meta_train_arm(model, arm_gradients(arm), cfg, sampler, curve, generator, progress=True)
    rows = [{"iteration": it, "task": t, "accuracy": a} for it, accs in points for t, a in enumerate(accs)]
    out = Path(measured) / unit_dir(arm, seed)
    with staged_dir(out) as tmp:
        write_text_atomic(tmp / "curve.csv", pd.DataFrame(rows).to_csv(index=False))
    return out


def units(cfg: GradientCombinationsConfig) -> list[dict]:
    return [{"arm": arm, "seed": seed} for arm in cfg.arms for seed in cfg.seeds]


def unit_names(params: dict, cfg: GradientCombinationsConfig) -> list[str]:
    """The measured units' directories under studies/gradient_combinations/."""
    return [unit_dir(**u) for u in units(cfg)]


def summary_outputs(params: dict, cfg: GradientCombinationsConfig) -> tuple[str, ...]:
    """What the summary writes: everything, or, with no seeds in this profile, metrics.json alone."""
    return OUTPUTS if cfg.seeds else ("metrics.json",)


def measurements_fingerprint(params: dict, cfg: GradientCombinationsConfig, measured: Path) -> str:
    """sha256 over the curves ``summarise`` reads (absent files count as absent)."""
    digest = hashlib.sha256()
    for unit in units(cfg):
        path = Path(measured) / unit_dir(**unit) / "curve.csv"
        digest.update(f"{path.parent.name}\0".encode() + (path.read_bytes() if path.is_file() else b"\0absent"))
    return digest.hexdigest()


def label(arm: str) -> str:
    return " + ".join(arm.split("_"))


def summary(curves: pd.DataFrame, cfg: GradientCombinationsConfig) -> dict:
    """Per arm and curve point, the mean accuracy with its 95% interval over seeds x tasks; at the
    last point, each arm against joint training (g1) and each sum against the last gradient alone
    with the same k, paired task by task (every arm scores the same tasks)."""
    per_point = {arm: [dict(zip(("iteration", "accuracy", "ci95"), (int(it), *mean_ci95(g["accuracy"]))))
                       for it, g in group.groupby("iteration")]
                 for arm, group in curves.groupby("arm", sort=False)}
    last = curves[curves["iteration"] == curves["iteration"].max()].sort_values(["seed", "task"])
    final = {arm: g["accuracy"].to_numpy() for arm, g in last.groupby("arm", sort=False)}
    compared = [(arm, "g1") for arm in final if arm != "g1" and "g1" in final]
    for arm in final:
        k = max(arm_gradients(arm))
        if arm_gradients(arm) == list(range(1, k + 1)) and k > 1 and f"g{k}" in final:
            compared.append((arm, f"g{k}"))
    differences = {f"{a}-vs-{b}": dict(zip(("change", "ci95"), mean_ci95(final[a] - final[b]))) for a, b in compared}
    return {"curves": per_point,
            "final": {arm: dict(zip(("accuracy", "ci95"), mean_ci95(v))) for arm, v in final.items()},
            "differences": differences}


def step_metrics(metrics: dict) -> list[tuple[str, float, int]]:
    """Each arm's held-out curve as an MLflow series (``accuracy.<arm>``, step = meta-iteration)."""
    return [(f"accuracy.{arm}", p["accuracy"], p["iteration"]) for arm, points in metrics.get("curves", {}).items()
            for p in points]


def summarise(params: dict, cfg: GradientCombinationsConfig, measured: Path, out: Path) -> dict:
    """Gather every arm's curves (``measured/<arm>-seed<seed>``) into ``out``: curves.csv (per arm
    and point), final.csv, curves.png and metrics.json; with no seeds in this profile, only
    metrics.json saying the study was not run."""
    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(cfg)
    if not cfg.seeds:
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        metrics = {"config": config, "ran": False, "profile": params.get("profile", "unnamed")}
        write_json_atomic(out / "metrics.json", metrics)
        return metrics
    missing = [unit_dir(**u) for u in units(cfg) if not (Path(measured) / unit_dir(**u) / "curve.csv").is_file()]
    if missing:
        raise PipelineError(f"gradient combinations: no curves for {', '.join(missing)} in {measured}; train them "
                            "first (`dvc repro`, or `gbml study gradient_combinations --arm A --seed S`)")
    curves = pd.concat([pd.read_csv(Path(measured) / unit_dir(**u) / "curve.csv").assign(**u) for u in units(cfg)],
                       ignore_index=True)
    metrics = {"config": config, "ran": True, **summary(curves, cfg)}
    from gbml.report.study_figures import gradient_combination_curves

    table = pd.DataFrame([{"arm": arm, **point} for arm, points in metrics["curves"].items() for point in points])
    write_text_atomic(out / "curves.csv", table.to_csv(index=False, float_format="%.6f"))
    final = pd.DataFrame([{"arm": arm, **r} for arm, r in metrics["final"].items()])
    write_text_atomic(out / "final.csv", final.to_csv(index=False, float_format="%.6f"))
    gradient_combination_curves(metrics["curves"], cfg, out / "curves.png")
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
