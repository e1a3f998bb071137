"""Does ``torch.compile`` pay for the engine? Times eager against compiled
``Conv4.forward_tasks`` where compilation applies: Reptile's first-order inner loop (setting (d)
of benchmarks/compare.py) and batched transductive evaluation (64 tasks, 10 steps). Second-order
MAML is left out: compiled graphs do not support double backward.

    python benchmarks/compile_trial.py            # both, eager then compiled, ~2 min on 2 cores

Prints warm-up seconds (compilation included) and the median tasks/s of the steps after it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.algorithms.reptile import Reptile, ReptileConfig
from gbml.data.tasks import EpisodeSampler
from gbml.evaluate import evaluate
from gbml.models.conv4 import Conv4
from gbml.perf import tune_allocator


def workload(name: str, compiled: bool):
    """(step, tasks per step) for ``name`` on random Omniglot-sized images."""
    torch.manual_seed(0)
    model = Conv4(5)
    if compiled:
        model.forward_tasks = torch.compile(model.forward_tasks, dynamic=False)
    images = torch.randint(0, 256, (200, 20, 1, 28, 28), dtype=torch.uint8)
    if name == "reptile":
        cfg = ReptileConfig(meta_batch=5, train_shots=10, inner_batch=10, inner_iters=5, inner_adam_state="parallel")
        algo = Reptile(model, cfg, shots=1, seed=0)
        sampler = EpisodeSampler(images, 5, 10, 0, seed=0)
        return (lambda: algo.meta_step(sampler.sample_tasks(5), 0)), 5
    cfg = MAMLConfig(inner_steps=10, inner_lr=0.4, eval_inner_steps=10, first_order=True, train_queries=15)
    algo = MAML(model, cfg, shots=1)
    return (lambda: evaluate(algo, images, 5, 1, 15, 64, seed=0, modes=("transductive",), progress=False)), 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    args = ap.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    for name in ("reptile", "evaluation"):
        for compiled in (False, True):
            step, tasks = workload(name, compiled)
            start = time.perf_counter()
            step(), step()
            warm = time.perf_counter() - start
            times: list[float] = []
            while sum(times) < args.seconds:
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            label = "compiled" if compiled else "eager"
            print(f"{name:10s} {label:8s} warm-up {warm:5.1f} s  {tasks / statistics.median(times):6.1f} tasks/s",
                  flush=True)


if __name__ == "__main__":
    main()
