"""Where one of gbml's benchmark steps spends its time: kernels against everything else.

Runs gbml's step (or an anchor's) at a setting of benchmarks/compare.py under ``torch.profiler``,
glibc told to keep freed memory, and prints, per step: wall time; the self time of the operators
that compute (convolutions forward and backward, batch norm, matrix products, the element-wise
rest); and what is left -- Python, autograd's bookkeeping, dispatch and allocation. A step that
is nearly all kernels can only go faster with fewer or faster kernels, not with less Python.

    python benchmarks/profile_step.py --settings a d e --threads 2
    .venv-bench/bin/python benchmarks/profile_step.py --impl learn2learn --settings a e
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.compare import ANCHORS, SETTINGS, anchor_step, applies, gbml_step  # noqa: E402

GROUPS = (("convolution", ("conv",)), ("batch norm", ("batch_norm",)), ("matrix products", ("mm", "addmm", "bmm", "linear")))


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other operators"


def profile(setting: str, impl: str, steps: int) -> dict:
    step = (anchor_step if impl in ANCHORS else gbml_step)(impl, SETTINGS[setting])
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    wall = (time.perf_counter() - start) / steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = {group: 0.0 for group, _ in GROUPS} | {"other operators": 0.0}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):   # autograd nodes and profiler ranges hold no kernels of their own
            totals[group_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return {"wall": wall, **totals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["a", "d", "e"], choices=list(SETTINGS))
    ap.add_argument("--impl", default="gbml", choices=["gbml", "gbml-parallel", *ANCHORS],
                    help="whose step (the anchors need .venv-bench: bash benchmarks/setup_anchors.sh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from gbml.perf import tune_allocator
    tune_allocator()
    for setting in args.settings:
        if not applies(args.impl, SETTINGS[setting]):
            continue
        r = profile(setting, args.impl, args.steps)
        kernels = sum(v for k, v in r.items() if k != "wall")
        parts = ", ".join(f"{k} {1e3 * v:.1f} ms ({100 * v / r['wall']:.0f}%)" for k, v in r.items() if k != "wall")
        print(f"{args.impl} {SETTINGS[setting]['label']}: {1e3 * r['wall']:.1f} ms per step; {parts}; "
              f"the rest (Python, autograd, dispatch, allocation) {1e3 * (r['wall'] - kernels):.1f} ms "
              f"({100 * (1 - kernels / r['wall']):.0f}%)")


if __name__ == "__main__":
    main()
