"""Meta-training throughput (tasks/s) of each algorithm on Omniglot-shaped inputs.

Times ``meta_step`` of the algorithms as params.yaml configures them (5-way 1-shot by default),
on random 28x28 images: throughput does not depend on the pixels. Prints one line per algorithm.

    python benchmarks/throughput.py --iters 30 --algorithms maml anil mamlpp
"""

from __future__ import annotations

import argparse
import time

import torch

from gbml.config import ALGORITHMS, RunSpec, load_params, resolved_run_config
from gbml.data.tasks import EpisodeSampler
from gbml.factory import build_algorithm, resolve_device, seed_everything


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--algorithms", nargs="+", default=sorted(ALGORITHMS))
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--iters", type=int, default=30, help="timed meta-iterations (after 3 warm-up ones)")
    ap.add_argument("--eval-tasks", type=int, default=50, help="timed test-time adaptations")
    args = ap.parse_args()
    params = load_params(args.params)
    for name in args.algorithms:
        spec = RunSpec(name, "omniglot", args.ways, args.shots, 0)
        cfg = resolved_run_config(params, spec)
        seed_everything(0, int(cfg["training"].get("threads", 0)))
        device = resolve_device(cfg["training"].get("device", "auto"))
        images = torch.rand(200, 20, 1, 28, 28, device=device)
        algorithm = build_algorithm(spec, cfg, (1, 28, 28), device)
        # The joint-training baseline draws labelled minibatches of its own, not episodes.
        own = algorithm.train_sampler(images, None, seed=0)
        draw = own.sample_tasks if own is not None else EpisodeSampler(
            images, args.ways, *algorithm.train_episode_shape, seed=0).sample_batch
        for i in range(3 + args.iters):
            if i == 3:
                start = time.perf_counter()
            algorithm.meta_step(draw(algorithm.meta_batch), i)   # images live on the device already
        train = time.perf_counter() - start
        test = EpisodeSampler(images, args.ways, args.shots, 1, seed=1)
        start = time.perf_counter()
        for _ in range(args.eval_tasks):
            e = test.sample_tasks(1).to(device)
            algorithm.adapt(e.support_x, e.support_y, [torch.Generator().manual_seed(0)])
        adapt = time.perf_counter() - start
        print(f"{name:8s} {args.iters / train:7.2f} it/s  {args.iters * algorithm.meta_batch / train:7.1f} tasks/s"
              f"  ({algorithm.meta_iters} iters ~ {algorithm.meta_iters * train / args.iters / 60:5.1f} min)"
              f"  adapt {1000 * adapt / args.eval_tasks:6.1f} ms/task", flush=True)


if __name__ == "__main__":
    main()
