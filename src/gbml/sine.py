"""The sine-wave regression case study (Finn et al. 2017, section 5.1; Nichol et al. 2018,
section 3 and Figure 1).

MAML, first-order MAML and Reptile meta-train the same seeded initialisation of a small MLP on
random sine tasks, and a joint-training baseline trains it on their points pooled. Each learned initialisation, and the untrained one, is then adapted to a fixed,
seeded set of test tasks with the *same* plain full-batch SGD on the K support points, and scored
by the MSE on the query grid after 0..``eval_steps`` steps: mean and 95% CI over test tasks.

Defaults, and where they come from:
- tasks: amplitude U[0.1, 5], phase U[0, 2 pi], x U[-5, 5] (Nichol et al. section 3), K = 10
  support points (both papers); the test loss is the MSE on 50 equally spaced points of [-5, 5],
  Nichol et al.'s discretisation of the L2 loss over the interval.
- model: 1-64-64-1, tanh (Nichol et al. Figure 1; tanh as in their demo, see ``gbml.models.mlp``).
- MAML / FOMAML (Finn et al. section 5.1): one inner SGD step on K points, K query points,
  meta-batch 25, Adam with lr 1e-3; Finn et al. train 70,000 iterations, the default here 4,000
  to fit a few CPU minutes. The inner learning rate is 0.02, not Finn et al.'s 0.01: MAML learns
  an initialisation for one particular step size, and every method is tested with the same SGD
  step of 0.02 here. (Trained at 0.01 and tested at 0.02, MAML's MSE after one step was 2.7
  instead of 0.44 in our runs; tested at 0.01 it was 0.85.)
- Reptile (the ``reptile-sinewaves-demo.py`` gist of Nichol et al.'s OpenAI post): one task per
  meta-iteration, one epoch of SGD (lr 0.02) over 50 points in minibatches of 10 (5 steps),
  outer step 0.1 annealed linearly to 0, 30,000 iterations. Each training task thus shows
  Reptile 50 points and MAML K + K = 20.
- pretrained (joint training, Finn et al.'s baseline): MAML's iterations, meta-batch and Adam, on
  the support and query points of each meta-batch's tasks pooled into one regression (no inner
  loop), so it learns the mean over tasks of the functions.
- test-time adaptation: SGD with lr 0.02 for 32 steps, predictions plotted after 0, 8, 16, 24,
  32 steps (the demo's protocol behind Figure 1).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import grad, vmap

from gbml.algorithms.core import REGRESSION, Params, make_loss, make_predict
from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.algorithms.pretrain import Pretrain, PretrainConfig
from gbml.algorithms.reptile import Reptile, ReptileConfig
from gbml.sine_config import SineStudyConfig
from gbml.io import write_json_atomic, write_text_atomic
from gbml.data.sine import INPUT, SineTask, SineTaskSampler
from gbml.models.mlp import MLP
from gbml.progress import progress as progress_bar
from gbml.stats import mean_ci95

RANDOM_INIT = "random_init"
LABELS = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile", "pretrain": "pretrained (joint training)",
          RANDOM_INIT: "random init"}


def build_model(cfg: SineStudyConfig) -> MLP:
    """The MLP with the initialisation every algorithm starts from, drawn from ``cfg.seed``
    without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return MLP(1, 1, cfg.hidden, cfg.depth, cfg.activation)


def build_algorithm(name: str, model: MLP, cfg: SineStudyConfig) -> tuple[MAML | Reptile | Pretrain, SineTaskSampler]:
    """The algorithm and the sampler of its meta-training tasks."""
    if name == "pretrain":   # the points MAML's tasks show it (K support + K query), pooled
        algo = Pretrain(model, PretrainConfig(meta_iters=cfg.maml_iters, meta_batch=cfg.maml_meta_batch,
                                              lr=cfg.maml_meta_lr, train_shots=cfg.shots + cfg.maml_queries),
                        cfg.shots, objective=REGRESSION)
    elif name in ("maml", "fomaml"):
        algo_cfg = MAMLConfig(meta_iters=cfg.maml_iters, meta_batch=cfg.maml_meta_batch,
                              meta_lr=cfg.maml_meta_lr, inner_steps=cfg.maml_inner_steps,
                              inner_lr=cfg.maml_inner_lr, first_order=name == "fomaml",
                              train_queries=cfg.maml_queries)
        algo = MAML(model, algo_cfg, cfg.shots, objective=REGRESSION)
    else:
        algo_cfg = ReptileConfig(meta_iters=cfg.reptile_iters, meta_batch=cfg.reptile_meta_batch,
                                 meta_step=cfg.reptile_meta_step, meta_step_final=cfg.reptile_meta_step_final,
                                 train_shots=cfg.reptile_train_shots, inner_optimizer="sgd",
                                 inner_lr=cfg.reptile_inner_lr, inner_batch=cfg.reptile_inner_batch,
                                 inner_iters=cfg.reptile_inner_iters)
        algo = Reptile(model, algo_cfg, cfg.shots, cfg.seed, objective=REGRESSION)
    shots, queries = algo.train_episode_shape
    return algo, SineTaskSampler(shots, queries, seed=cfg.seed + 1)


def meta_train(name: str, cfg: SineStudyConfig, progress: bool = True) -> tuple[Params, dict]:
    """Meta-train ``name`` from the seeded initialisation; returns the learned initialisation
    and a summary (seconds, tasks seen, a coarse curve of the training loss)."""
    algo, sampler = build_algorithm(name, build_model(cfg), cfg)
    every = max(1, algo.meta_iters // 50)
    curve, window = [], []
    start = time.perf_counter()
    bar = progress_bar(range(algo.meta_iters), desc=f"sine {LABELS[name]}", disable=not progress,
               dynamic_ncols=True, mininterval=0.5)
    for iteration in bar:
        window.append(algo.meta_step(sampler.sample_batch(algo.meta_batch), iteration)["train_loss"])
        if (iteration + 1) % every == 0 or iteration + 1 == algo.meta_iters:
            curve.append([iteration + 1, float(np.mean(window))])
            window = []
            bar.set_postfix(train_loss=f"{curve[-1][1]:.3f}", refresh=False)
    seconds = time.perf_counter() - start
    params = {k: p.detach().clone() for k, p in algo.params.items()}
    return params, {"train_seconds": seconds, "meta_iters": algo.meta_iters,
                    "tasks_seen": algo.meta_iters * algo.meta_batch, "train_loss_curve": curve}


def sgd_adaptation(model: torch.nn.Module, init: Params, support_x: torch.Tensor,
                   support_y: torch.Tensor, eval_x: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """Predictions at ``eval_x`` after 0..``steps`` full-batch SGD steps on each task's support
    set, every task starting from ``init``: inputs are stacked over tasks (``[tasks, n, 1]``),
    the result is ``[tasks, steps + 1, n_eval, 1]``. Tasks are adapted in parallel with
    ``vmap``; each is exactly ``theta <- theta - lr * grad L_support(theta)``."""
    loss, predict = make_loss(model, REGRESSION), make_predict(model)
    task_grad, task_predict = vmap(grad(loss)), vmap(predict)
    tasks = support_x.shape[0]
    params = {k: p.detach().expand(tasks, *p.shape).clone() for k, p in init.items()}
    predictions = [task_predict(params, eval_x)]
    for _ in range(steps):
        grads = task_grad(params, support_x, support_y)
        params = {k: p - lr * grads[k] for k, p in params.items()}
        predictions.append(task_predict(params, eval_x))
    return torch.stack(predictions, 1).detach()


def sample_test_tasks(cfg: SineStudyConfig) -> list[SineTask]:
    sampler = SineTaskSampler(cfg.shots, cfg.eval_query_points, seed=cfg.test_seed, query_grid=True)
    return [sampler.sample_task() for _ in range(cfg.test_tasks)]


def post_adaptation_mse(model: torch.nn.Module, init: Params, tasks: list[SineTask], lr: float,
                        steps: int) -> np.ndarray:
    """Per-task query MSE after 0..``steps`` SGD steps, ``[tasks, steps + 1]``."""
    stack = lambda attr: torch.stack([getattr(t.episode, attr) for t in tasks])  # noqa: E731
    preds = sgd_adaptation(model, init, stack("support_x"), stack("support_y"), stack("query_x"), lr, steps)
    return (preds - stack("query_y").unsqueeze(1)).pow(2).mean((2, 3)).double().numpy()


def run_sine_study(cfg: SineStudyConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Meta-train, evaluate and write ``out_dir``: ``curves.csv`` (mean and CI per algorithm and
    step), ``per_task.csv`` (every test task's MSE curve), ``adaptation.png`` (Figure 1 style),
    ``mse_vs_steps.png``, and last ``metrics.json`` (config, curves, timings), each atomically.
    Returns the content of ``metrics.json``."""
    from gbml.report.sine_figures import adaptation_panels, mse_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        started = time.perf_counter()
        model = build_model(cfg)
        inits = {RANDOM_INIT: {k: p.detach().clone() for k, p in model.named_parameters()}}
        summaries = {RANDOM_INIT: {"train_seconds": 0.0, "meta_iters": 0, "tasks_seen": 0}}
        for name in cfg.algorithms:
            inits[name], summaries[name] = meta_train(name, cfg, progress)
        order = [*cfg.algorithms, RANDOM_INIT]

        tasks = sample_test_tasks(cfg)
        per_task = {name: post_adaptation_mse(model, inits[name], tasks, cfg.eval_lr, cfg.eval_steps)
                    for name in order}
        steps = np.arange(cfg.eval_steps + 1)
        algorithms = {}
        for name in order:
            stats = [mean_ci95(per_task[name][:, s]) for s in steps]
            algorithms[name] = {
                "label": LABELS[name],
                "mse_mean": [m for m, _ in stats], "mse_ci95": [c for _, c in stats],
                "mse_final": stats[-1][0], "mse_final_ci95": stats[-1][1], **summaries[name]}

        rows = ["algorithm,steps,mse_mean,mse_ci95,num_tasks"]
        rows += [f"{name},{s},{algorithms[name]['mse_mean'][s]:.6g},{algorithms[name]['mse_ci95'][s]:.6g},"
                 f"{len(tasks)}" for name in order for s in steps]
        write_text_atomic(out / "curves.csv", "\n".join(rows) + "\n")
        rows = ["algorithm,task,amplitude,phase," + ",".join(f"mse_{s}" for s in steps)]
        rows += [f"{name},{i},{t.amplitude:.6g},{t.phase:.6g}," + ",".join(f"{v:.6g}" for v in per_task[name][i])
                 for name in order for i, t in enumerate(tasks)]
        write_text_atomic(out / "per_task.csv", "\n".join(rows) + "\n")

        if cfg.figure_tasks:
            shown = tasks[: cfg.figure_tasks]
            grid = torch.linspace(*INPUT, 200).unsqueeze(1)
            predictions = {}
            for name in order:
                preds = sgd_adaptation(model, inits[name], torch.stack([t.episode.support_x for t in shown]),
                                       torch.stack([t.episode.support_y for t in shown]),
                                       grid.expand(len(shown), -1, -1), cfg.eval_lr, max(cfg.figure_steps))
                predictions[LABELS[name]] = preds[:, list(cfg.figure_steps), :, 0].numpy()
            panels = [{"truth": t(grid)[:, 0].numpy(), "support_x": t.episode.support_x[:, 0].numpy(),
                       "support_y": t.episode.support_y[:, 0].numpy(), "amplitude": t.amplitude,
                       "phase": t.phase} for t in shown]
            adaptation_panels(grid[:, 0].numpy(), panels, predictions, list(cfg.figure_steps),
                              out / "adaptation.png")
        mse_curves(steps, {LABELS[n]: (np.array(algorithms[n]["mse_mean"]), np.array(algorithms[n]["mse_ci95"]))
                           for n in order},
                   f"Sine regression, K={cfg.shots}: {len(tasks)} test tasks, SGD lr {cfg.eval_lr} on the support set",
                   out / "mse_vs_steps.png")

        config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
        metrics = {"config": config, "num_test_tasks": len(tasks),
                   "steps": steps.tolist(), "algorithms": algorithms,
                   "total_seconds": time.perf_counter() - started}
        write_json_atomic(out / "metrics.json", metrics)
        return metrics
    finally:
        torch.set_num_threads(threads)
