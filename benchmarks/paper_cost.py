"""What each published cell costs: the paper profile's grid timed on this machine.

For every cell of ``profiles/paper.yaml`` (seed 0) it builds the algorithm exactly as a run
would, times a few meta-iterations and test-time adaptations on random images of the dataset's
shape (the cost does not depend on the pixels, and Mini-ImageNet needs no source), and
extrapolates: meta-iterations x seconds per iteration, plus the held-out adaptations (learning
curve or MAML++'s per-epoch validation) and the test tasks. Writes ``reports/compute/`` (README.md
and cells.csv) and prints one line per cell.

    python benchmarks/paper_cost.py                 # all cells, a few minutes on 2 cores
    python benchmarks/paper_cost.py --algorithms maml --min-seconds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from gbml.config import grid, load_params, resolved_run_config
from gbml.data.tasks import EpisodeSampler
from gbml.factory import build_algorithm, seed_everything

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"omniglot": (1, 28, 28), "miniimagenet": (3, 84, 84)}


def timed(step, min_seconds: float, min_calls: int = 2) -> float:
    """Seconds per call of ``step`` after one warm-up call: at least ``min_calls`` calls and
    ``min_seconds`` in all."""
    step()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        step()
        calls += 1
    return (time.perf_counter() - start) / calls


def held_out_adaptations(cfg: dict, algorithm) -> int:
    """Adaptations a run spends on held-out tasks before the test: MAML++ validates every epoch,
    the others score a learning-curve point every curve_every iterations."""
    training, iters = cfg["training"], algorithm.meta_iters
    every = getattr(algorithm, "validate_every", 0) or int(training["curve_every"])
    return (iters // every) * int(training["curve_tasks"])


def cell_cost(params: dict, spec, min_seconds: float) -> dict:
    cfg = resolved_run_config(params, spec)
    seed_everything(0, 0)
    shape = SHAPES[spec.dataset]
    algorithm = build_algorithm(spec, cfg, shape, torch.device("cpu"))
    shots, queries = algorithm.train_episode_shape
    images = torch.randint(0, 256, (max(spec.ways, 20), 20 if spec.dataset == "omniglot" else 40, *shape),
                           dtype=torch.uint8)
    train = EpisodeSampler(images, spec.ways, shots, queries, seed=0)
    step = iter(range(10**9))
    per_iter = timed(lambda: algorithm.meta_step(train.sample_batch(algorithm.meta_batch), next(step)), min_seconds)
    test = EpisodeSampler(images, spec.ways, spec.shots, cfg["evaluate"]["queries"], seed=1)

    def adapt():
        e = test.sample_tasks(1)
        algorithm.adapt(e.support_x, e.support_y, [torch.Generator().manual_seed(0)])

    per_task = timed(adapt, min_seconds / 2)
    adaptations = held_out_adaptations(cfg, algorithm) + int(cfg["evaluate"]["num_tasks"])
    hours = (algorithm.meta_iters * per_iter + adaptations * per_task) / 3600
    return {"cell": spec.name.rsplit("-seed", 1)[0], "algorithm": spec.algorithm, "setting": spec.setting,
            "meta_iters": algorithm.meta_iters, "meta_batch": algorithm.meta_batch,
            "tasks": algorithm.meta_iters * algorithm.meta_batch, "engine": algorithm.engine,
            "s_per_iter": per_iter, "adaptations": adaptations, "s_per_adaptation": per_task,
            "hours_per_seed": hours, "hours_all_seeds": hours * len(params["grid"]["seeds"])}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} on {threads} thread{'s' * (threads > 1)}, no GPU"


def markdown(df: pd.DataFrame, params_path: str) -> str:
    lines = ["# What each published cell costs on this machine", "",
             f"Written by `benchmarks/paper_cost.py` from `{params_path}` (seed 0 of each cell) on {machine()}. "
             "Seconds per meta-iteration and per test-time adaptation are measured on random images of the "
             "dataset's shape; hours extrapolate to the full run: meta-iterations plus held-out adaptations "
             "(the learning curve, or MAML++'s validation every epoch) plus the test tasks. A cell is a GPU job "
             "when its hours are more than a workstation's night.", "",
             "| cell | meta-iterations x meta-batch | s / iteration | adaptations | s / adaptation | hours / seed | hours, all seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.cell} | {r.meta_iters:,} x {r.meta_batch} | {r.s_per_iter:.3f} | {r.adaptations:,} "
                     f"| {r.s_per_adaptation:.3f} | {r.hours_per_seed:,.1f} | {r.hours_all_seeds:,.1f} |")
    lines += ["", f"Total: {df.hours_all_seeds.sum():,.0f} CPU-hours for the grid "
                  f"({df.hours_all_seeds.sum() / 24:,.0f} days of this machine).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default=str(ROOT / "profiles" / "paper.yaml"))
    p.add_argument("--algorithms", nargs="+", help="only these grid entries")
    p.add_argument("--min-seconds", type=float, default=8.0, help="timing per cell, at least (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "compute")
    args = p.parse_args(argv)
    params = load_params(args.params)
    rows = []
    for spec in grid(params):
        if spec.seed != params["grid"]["seeds"][0] or (args.algorithms and spec.algorithm not in args.algorithms):
            continue
        rows.append(cell_cost(params, spec, args.min_seconds))
        r = rows[-1]
        print(f"{r['cell']:32s} {r['s_per_iter']:7.3f} s/it  {r['s_per_adaptation']:6.3f} s/adapt  "
              f"{r['hours_per_seed']:8.1f} h/seed", flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "cells.csv", index=False, float_format="%.4f")
    (args.out / "README.md").write_text(markdown(df, os.path.relpath(args.params, ROOT)))
    print(f"wrote {args.out}/README.md and cells.csv")


if __name__ == "__main__":
    main()
