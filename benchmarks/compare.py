"""gbml against learn2learn 0.2.0 and higher 0.2.1, side by side, in one run.

Times meta-training (tasks/s) at the settings of issue 7 and evaluation (test tasks/s) in both
protocols, for gbml (Reptile as the reference runs it, its Adam state chained from task to task,
and as ``gbml-parallel``, tasks side by side) and for the anchors (benchmarks/anchors.py), under
glibc's allocator told to keep freed memory (what gbml does in-process) and with mimalloc
preloaded; and a ceiling: a plain training step of the same Conv4 on one batch of the
meta-batch's total image count, in both memory layouts (none for the non-transductive mode, whose
one batch would hold every query's support + 1 set: more work than the mode). Each measurement
is a fresh worker process; rounds interleave every (setting, implementation, allocator) in a
shuffled order and the table reports medians, since this machine's speed drifts.

Run in the benchmark environment (bash benchmarks/setup_anchors.sh builds it):

    .venv-bench/bin/python benchmarks/compare.py --rounds 5 --out reports/benchmarks

Writes ``results.csv`` (every measurement), ``table.md`` and ``tasks_per_second.png``.
``--only gbml`` skips the anchors (runs in the main environment). On a slow machine,
``--best-known-allocator --min-seconds 0 --min-steps 1 --only gbml gbml-parallel learn2learn
higher plain-reptile ceiling-channels-last`` times each implementation once per round under the
allocator that suited it best in the previous results.csv (the 2026-12-03 table: 27 cells a
round instead of 83).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MIMALLOC = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"
# glibc told to keep freed memory (what gbml.perf.tune_allocator does in-process), for the anchors.
GLIBC_TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1), "MALLOC_TOP_PAD_": str(64 << 20)}
ANCHORS = ("learn2learn", "higher", "plain-reptile")
OMNIGLOT = dict(in_channels=1, image_size=28, hidden=64, downsample="stride")
MINIIMAGENET = dict(in_channels=3, image_size=84, hidden=32, downsample="maxpool")

# name -> what it measures. "kind": maml (any order/steps), reptile or eval.
SETTINGS = {
    "a": dict(kind="maml", label="(a) MAML 2nd order, 1 step, Omniglot 5w1s, 15 q, mb 32", ways=5, shots=1,
              queries=15, meta_batch=32, inner_steps=1, inner_lr=0.4, first_order=False, model=OMNIGLOT),
    "b": dict(kind="maml", label="(b) MAML 2nd order, 5 steps, Omniglot 5w1s, 15 q, mb 32", ways=5, shots=1,
              queries=15, meta_batch=32, inner_steps=5, inner_lr=0.4, first_order=False, model=OMNIGLOT),
    "c": dict(kind="maml", label="(c) FOMAML, 5 steps, Omniglot 5w1s, 15 q, mb 32", ways=5, shots=1,
              queries=15, meta_batch=32, inner_steps=5, inner_lr=0.4, first_order=True, model=OMNIGLOT),
    "d": dict(kind="reptile", label="(d) Reptile Omniglot 5w, train-shots 10, 5 Adam steps of 10, mb 5",
              ways=5, train_shots=10, inner_batch=10, inner_iters=5, meta_batch=5, model=OMNIGLOT),
    "e": dict(kind="maml", label="(e) MAML 2nd order, 5 steps, Mini-ImageNet 5w1s, 32 filters, 15 q, mb 4",
              ways=5, shots=1, queries=15, meta_batch=4, inner_steps=5, inner_lr=0.01, first_order=False,
              model=MINIIMAGENET),
    "eval-t": dict(kind="eval", mode="transductive", label="evaluation, transductive: Omniglot 5w1s, 15 q, 10 steps",
                   ways=5, shots=1, queries=15, inner_steps=10, inner_lr=0.4, tasks=64, model=OMNIGLOT),
    "eval-nt": dict(kind="eval", mode="non_transductive",
                    label="evaluation, non-transductive: Omniglot 5w1s, 15 q, 10 steps",
                    ways=5, shots=1, queries=15, inner_steps=10, inner_lr=0.4, tasks=64, model=OMNIGLOT),
}
IMPLEMENTATIONS = ("gbml", "gbml-parallel", "learn2learn", "higher", "plain-reptile",
                   "ceiling-nchw", "ceiling-channels-last")


def applies(impl: str, setting: dict) -> bool:
    if impl in ("learn2learn", "higher"):
        return setting["kind"] in ("maml", "eval")
    if impl in ("plain-reptile", "gbml-parallel"):
        return setting["kind"] == "reptile"
    if impl.startswith("ceiling"):   # a plain step over every query's support + 1 batch: more work than the mode
        return setting.get("mode") != "non_transductive"
    return True


def images_per_task(s: dict) -> int:
    """Images one task puts through the network's forward pass, per pass over its data."""
    if s["kind"] == "reptile":
        return s["inner_batch"] * s["inner_iters"]
    support, query = s["ways"] * s["shots"], s["ways"] * s["queries"]
    if s["kind"] == "eval" and s["mode"] == "non_transductive":
        return support + query * (support + 1)
    return support + query


# --- workers: one measurement each, in a fresh process ---

def gbml_step(impl: str, s: dict):
    from gbml.algorithms.maml import MAML, MAMLConfig
    from gbml.algorithms.reptile import Reptile, ReptileConfig
    from gbml.data.tasks import EpisodeSampler
    from gbml.evaluate import evaluate
    from gbml.models.conv4 import Conv4

    m = s["model"]
    model = Conv4(s["ways"], m["in_channels"], m["image_size"], m["hidden"], m["downsample"])
    classes = 64 if m["in_channels"] == 3 else 200
    images = torch.randint(0, 256, (classes, 40, m["in_channels"], m["image_size"], m["image_size"]),
                           dtype=torch.uint8)
    if s["kind"] == "reptile":
        # The reference chains one Adam state through the tasks (stacks of one, in order);
        # "parallel" runs them side by side, an Adam state per task.
        cfg = ReptileConfig(meta_batch=s["meta_batch"], train_shots=s["train_shots"], inner_batch=s["inner_batch"],
                            inner_iters=s["inner_iters"],
                            inner_adam_state="parallel" if impl == "gbml-parallel" else "sequential")
        algo = Reptile(model, cfg, shots=1, seed=0)
        sampler = EpisodeSampler(images, s["ways"], s["train_shots"], 0, seed=0)
        return lambda: algo.meta_step(sampler.sample_tasks(s["meta_batch"]), 0)
    cfg = MAMLConfig(meta_batch=s.get("meta_batch", 1), inner_steps=s["inner_steps"], inner_lr=s["inner_lr"],
                     first_order=s.get("first_order", True), train_queries=s["queries"],
                     eval_inner_steps=s["inner_steps"])
    algo = MAML(model, cfg, shots=s["shots"])
    if s["kind"] == "eval":
        return lambda: evaluate(algo, images, s["ways"], s["shots"], s["queries"], s["tasks"], seed=0,
                                modes=(s["mode"],), progress=False)
    sampler = EpisodeSampler(images, s["ways"], s["shots"], s["queries"], seed=0)
    return lambda: algo.meta_step(sampler.sample_tasks(s["meta_batch"]), 0)


def anchor_step(impl: str, s: dict):
    sys.path.insert(0, str(ROOT))
    from benchmarks import anchors
    if impl == "learn2learn":
        anchors.import_learn2learn()
    if s["kind"] == "reptile":
        return anchors.reptile_step(ways=s["ways"], train_shots=s["train_shots"], inner_batch=s["inner_batch"],
                                    inner_iters=s["inner_iters"], meta_batch=s["meta_batch"], **s["model"])
    common = dict(ways=s["ways"], shots=s["shots"], queries=s["queries"], inner_steps=s["inner_steps"],
                  inner_lr=s["inner_lr"], **s["model"])
    if s["kind"] == "eval":
        return anchors.eval_step(impl, s["mode"], tasks=s["tasks"], **common)
    return anchors.maml_step(impl, meta_batch=s["meta_batch"], first_order=s["first_order"], **common)


def ceiling_step(impl: str, s: dict):
    """A plain training step (forward, backward, Adam) on the images of one meta-batch (of
    ``tasks`` test tasks for evaluation) in one batch: what the hardware does with no
    meta-learning around it."""
    from gbml.models.conv4 import Conv4
    m = s["model"]
    n = images_per_task(s) * s.get("meta_batch", s.get("tasks", 1))
    model = Conv4(s["ways"], m["in_channels"], m["image_size"], m["hidden"], m["downsample"])
    x = torch.rand(n, m["in_channels"], m["image_size"], m["image_size"])
    y = torch.randint(0, s["ways"], (n,))
    if impl == "ceiling-channels-last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters())

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def worker(impl: str, setting: str, min_seconds: float, threads: int, min_steps: int = 2) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = SETTINGS[setting]
    if impl.startswith("gbml"):
        from gbml.perf import tune_allocator
        tune_allocator()
        step = gbml_step(impl, s)
    elif impl.startswith("ceiling"):
        step = ceiling_step(impl, s)
    else:
        step = anchor_step(impl, s)
    step()   # warm-up: first-call allocations and dispatch caches
    times = []
    while sum(times) < min_seconds or len(times) < min_steps:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    tasks = s.get("meta_batch", s.get("tasks"))
    return {"tasks_per_s": tasks / seconds, "steps": len(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --- driver ---

def best_known_allocator(results: Path, impl: str, setting: str) -> str:
    """The allocator under which ``impl`` was fastest at ``setting`` in an earlier run's results
    (median over its rounds); gbml's own tuned glibc ("default") for gbml and for anything the
    earlier run did not time."""
    import pandas as pd
    if impl.startswith("gbml") or not results.is_file():
        return "default" if impl.startswith("gbml") else "glibc-tuned"
    df = pd.read_csv(results)
    df = df[(df.implementation == impl) & (df.setting == setting)]
    if df.empty:
        return "glibc-tuned"
    return df.groupby("allocator")["tasks_per_s"].median().idxmax()


def measure(python: str, impl: str, setting: str, allocator: str, args) -> dict | None:
    # This checkout's gbml, whichever one the environment has installed.
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    if allocator == "mimalloc":
        env["LD_PRELOAD"] = MIMALLOC
    if allocator == "glibc-tuned":
        env.update(GLIBC_TUNED)
    cmd = [python, __file__, "--worker", impl, setting, "--min-seconds", str(args.min_seconds), "--min-steps", str(args.min_steps),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        print(f"  {impl} {setting} {allocator}: FAILED\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--only", nargs="+", default=list(IMPLEMENTATIONS), choices=list(IMPLEMENTATIONS) + ["gbml"],
                    help="implementations to run ('gbml' alone: gbml's and the ceilings)")
    ap.add_argument("--allocators", nargs="+", default=["default", "mimalloc", "glibc-tuned"],
                    choices=["default", "mimalloc", "glibc-tuned"],
                    help="gbml tunes glibc itself, so it runs with default and mimalloc only; the ceilings "
                         "run with the two tuned ones (the default allocator only slows them)")
    ap.add_argument("--anchors-default", action="store_true",
                    help="also time the anchors under glibc's default allocator (never their fastest here: "
                         "mimalloc or the tuned glibc always beat it, reports/benchmarks/results.csv of issue 7)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per measurement (at least --min-steps)")
    ap.add_argument("--min-steps", type=int, default=2, help="timed steps per measurement, at least")
    ap.add_argument("--best-known-allocator", action="store_true",
                    help="time each anchor and ceiling only under the allocator that was fastest for it at that "
                         "setting in OUT/results.csv (gbml under its own tuned glibc): a third of the cells")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    ap.add_argument("--report-only", action="store_true", help="rewrite the table and chart from OUT/results.csv")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.min_seconds, args.threads, args.min_steps)))
        return
    if args.report_only:
        import pandas as pd
        rows = pd.read_csv(args.out / "results.csv").to_dict("records")
        args.rounds = 1 + max(r["round"] for r in rows)
        write_report(rows, args)
        return
    only = [i for i in IMPLEMENTATIONS if i in args.only or (args.only == ["gbml"] and i not in ANCHORS)]
    allocators = [a for a in args.allocators if a != "mimalloc" or Path(MIMALLOC).exists()]
    cells = [(i, s, a) for s in args.settings for i in only if applies(i, SETTINGS[s]) for a in allocators
             if not (a == "glibc-tuned" and i.startswith("gbml")) and not (a == "default" and i.startswith("ceiling"))
             and not (a == "default" and i in ANCHORS and not args.anchors_default)]
    if args.best_known_allocator:
        cells = [c for c in cells if c[2] == best_known_allocator(args.out / "results.csv", c[0], c[1])]
    rows, rng = [], random.Random(0)
    for r in range(args.rounds):
        rng.shuffle(cells)
        for n, (impl, setting, allocator) in enumerate(cells, 1):
            result = measure(sys.executable, impl, setting, allocator, args)
            if result:
                rows.append({"round": r, "setting": setting, "implementation": impl, "allocator": allocator, **result})
                print(f"round {r + 1}/{args.rounds} [{n}/{len(cells)}] {setting:8s} {impl:22s} {allocator:9s}"
                      f" {result['tasks_per_s']:8.2f} tasks/s", flush=True)
    write_report(rows, args)


def write_report(rows: list[dict], args) -> None:
    """results.csv, table.md (medians; each anchor at its best allocator; speed-up over the
    fastest anchor; share of the best ceiling) and a bar chart, written atomically."""
    import pandas as pd
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    med = df.groupby(["setting", "implementation", "allocator"])["tasks_per_s"].median().reset_index()
    best = med.loc[med.groupby(["setting", "implementation"])["tasks_per_s"].idxmax()]
    peak = df.groupby(["setting", "implementation"])["peak_rss_mb"].max()
    table = best.pivot(index="setting", columns="implementation", values="tasks_per_s")
    lines = [f"# gbml vs learn2learn 0.2.0 and higher 0.2.1 ({torch.__version__}, {args.threads} threads, "
             f"medians of {args.rounds} interleaved rounds, tasks/s)", "",
             "| setting | " + " | ".join(c for c in IMPLEMENTATIONS if c in table) +
             " | best gbml / best anchor | best gbml / best ceiling | gbml peak RSS MB |",
             "|---|" + "---|" * (sum(c in table for c in IMPLEMENTATIONS) + 3)]
    for setting in [s for s in SETTINGS if s in table.index]:
        row = table.loc[setting]
        cells = []
        for impl in [c for c in IMPLEMENTATIONS if c in table]:
            value = row.get(impl)
            alloc = best[(best.setting == setting) & (best.implementation == impl)].allocator
            cells.append("–" if value != value or value is None else f"{value:.1f} ({alloc.iloc[0]})")
        engines = {e: row.get(e) for e in ("gbml", "gbml-parallel") if row.get(e) == row.get(e)}
        engine, gbml = max(engines.items(), key=lambda kv: kv[1] or 0) if engines else ("", None)
        anchors = [row.get(a) for a in ANCHORS if a in row and row.get(a) == row.get(a)]
        ceilings = [row.get(c) for c in ("ceiling-nchw", "ceiling-channels-last") if c in row and row.get(c) == row.get(c)]
        vs_anchor = f"{gbml / max(anchors):.2f}x ({engine})" if anchors and gbml else "–"
        vs_ceiling = f"{100 * gbml / max(ceilings):.0f}%" if ceilings and gbml else "–"
        rss = f"{peak.get((setting, 'gbml'), float('nan')):.0f}"
        lines.append(f"| {SETTINGS[setting]['label']} | " + " | ".join(cells) + f" | {vs_anchor} | {vs_ceiling} | {rss} |")
    lines += ["", "In brackets: the allocator of the best median (gbml always tunes glibc itself: "
              "gbml.perf.tune_allocator; glibc-tuned: the same settings through the environment). Ceiling: a "
              "plain training step of the same Conv4 on the images of one meta-batch (of the evaluation's "
              "tasks) in one batch, as tasks/s; none for the non-transductive mode. gbml: Reptile with its "
              "inner Adam state chained from task to task, as the reference; gbml-parallel: the tasks side by "
              "side, each with its own state. Where gbml misses, see profiles.txt and the README's \"Speed\"."]
    for name, text in (("table.md", "\n".join(lines) + "\n"), ("results.csv", df.to_csv(index=False))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)
    plot(table, out / "tasks_per_second.png")
    print("\n".join(lines))


def plot(table, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    impls = [c for c in IMPLEMENTATIONS if c in table]
    table = table.reindex([s for s in SETTINGS if s in table.index])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ax.bar([i + k * width for i in range(len(table))], table[impl].fillna(0), width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(table))], list(table.index))
    ax.set_yscale("log")
    ax.set_ylabel("tasks / s (log)")
    ax.set_title("Meta-training and evaluation throughput (median, best allocator)")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


if __name__ == "__main__":
    main()
