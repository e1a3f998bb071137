"""What a gbml stage pays before its first tensor: every training, evaluation and study stage is a
fresh process (DVC and Snakemake run one per stage), so the default `dvc repro` pays it ~40 times.

Times, each in a fresh interpreter, in shuffled interleaved rounds (this machine's speed drifts):

* ``torch``: ``import torch``;
* ``gbml.train``: importing what ``gbml train`` imports (torch, MLflow, matplotlib, gbml);
* ``seed (torch.use_deterministic_algorithms)``: that, then seeding as gbml did before, which
  imports ``torch._inductor`` to set the compiler's copy of the flag;
* ``seed (gbml.factory.seed_everything)``: that, then gbml's seeding, which sets only the flag
  eager kernels read.

    python benchmarks/startup.py --rounds 7

Prints each variant's median seconds and the seeding's share.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys

VARIANTS = {
    "torch": "import torch",
    "gbml.train": "import gbml.cli, gbml.train",
    "seed (torch.use_deterministic_algorithms)":
        "import gbml.cli, gbml.train, torch; torch.manual_seed(0); torch.use_deterministic_algorithms(True, warn_only=True)",
    "seed (gbml.factory.seed_everything)":
        "import gbml.cli, gbml.train; from gbml.factory import seed_everything; seed_everything(0, 0)",
}
TIMED = "import time; _t = time.perf_counter(); {code}; print(time.perf_counter() - _t)"


def measure(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", TIMED.format(code=code)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are printed")
    args = ap.parse_args()
    times = {name: [] for name in VARIANTS}
    rng = random.Random(0)
    for r in range(args.rounds):
        order = list(VARIANTS)
        rng.shuffle(order)
        for name in order:
            times[name].append(measure(VARIANTS[name]))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in medians.items():
        print(f"{name:45s} {t:6.2f} s  (min {min(times[name]):.2f}, max {max(times[name]):.2f})")
    old, new = medians["seed (torch.use_deterministic_algorithms)"], medians["seed (gbml.factory.seed_everything)"]
    print(f"seeding without the compiler import saves {old - new:.2f} s per process ({100 * (old - new) / old:.0f}%)")


if __name__ == "__main__":
    main()
