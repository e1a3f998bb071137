"""A timed slice of the paper profile's MAML and Reptile Omniglot 5-way 1-shot cells on a GPU.

The paper grid (profiles/paper.yaml) is a GPU job: 60,000 meta-iterations of meta-batch 32 for
MAML, 100,000 of meta-batch 5 for Reptile, per cell and seed. Running one cell takes hours, so
this runs each for ``--slice-seconds`` of the real outer loop (``gbml.meta_training.meta_train``: meta-step,
non-finite check, autocast, held-out curve points) and extrapolates what a full cell costs:

    wall = meta_iters / (iterations/s)                     the outer loop, steady state
         + (meta_iters / curve_every) * one curve point    held-out accuracy, curve_tasks tasks
         + evaluation of num_tasks tasks in every mode     timed on --eval-tasks of them, scaled

Iterations/s leaves out the first 5% of the slice (cuDNN autotuning, allocator growth) and the
curve points; a curve point and the evaluation are timed on at most --eval-tasks tasks and
scaled. Resume checkpoints and MLflow logging are left out (milliseconds per 1,000
iterations). Also measured: peak GPU memory (``torch.cuda.max_memory_allocated``) and GPU
utilisation during the slice, sampled once a second through NVML (``torch.cuda.utilization``,
which needs pynvml) or, without pynvml, ``nvidia-smi``; the CSV says which. NVML's figure is the
share of time a kernel was running, not how many SMs it kept busy.

    python benchmarks/gpu_slice.py --slice-seconds 120 --out reports/gpu
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from gbml.config import RunSpec, load_params, resolved_run_config
from gbml.data.fetch import OMNIGLOT_ARCHIVES, fetch_archives
from gbml.data.omniglot import prepare_omniglot
from gbml.data.prepared import load_split
from gbml.data.tasks import EpisodeSampler
from gbml.evaluate import evaluate
from gbml.factory import build_algorithm, seed_everything
from gbml.perf import autocast, configure_process, peak_memory_mb
from gbml.checkpoints import Progress
from gbml.meta_training import curve_point, meta_train
from gbml.train import curve_split_name

REPO = Path(__file__).resolve().parents[1]
WARMUP = 0.05   # the share of the slice left out of the steady-state rate


class SliceOver(Exception):
    """Raised from the per-iteration callback when the slice's time is up."""


class Deadline:
    """``meta_train``'s per-iteration ``save`` callback, used as a clock: notes where the loop
    stands once the warm-up is over, and ends it after ``seconds`` of wall time."""
    last = None   # meta_train's non-finite message reads save.last: no resume checkpoint here

    def __init__(self, seconds: float):
        now = time.perf_counter()
        self.warm_end, self.end, self.warm = now + WARMUP * seconds, now + seconds, None

    def __call__(self, state: Progress, final: bool) -> None:
        now = time.perf_counter()
        if self.warm is None and now >= self.warm_end:
            self.warm = (state.iteration, state.seconds)
        if now >= self.end:
            raise SliceOver


class Utilisation(threading.Thread):
    """GPU utilisation (%) and memory in use (MiB, nvidia-smi only) sampled every second."""

    def __init__(self, device: torch.device):
        super().__init__(daemon=True)
        self.device, self.util, self.mem, self.stop = device, [], [], threading.Event()
        self.source = self.pick_source()

    def pick_source(self) -> str:
        try:
            torch.cuda.utilization(self.device)
            return "nvml (torch.cuda.utilization / pynvml)"
        except Exception:   # ModuleNotFoundError without pynvml, NVML errors
            pass
        index = self.device.index or 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        self.smi_id = visible[index] if index < len(visible) and visible[index].strip() else str(index)
        return "nvidia-smi" if self.smi() else "unavailable (no pynvml, nvidia-smi failed)"

    def smi(self) -> tuple[float, float] | None:
        try:
            out = subprocess.run(["nvidia-smi", f"--id={self.smi_id}", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            util, mem = out.stdout.strip().splitlines()[0].split(",")
            return float(util), float(mem)
        except Exception:
            return None

    def run(self) -> None:
        while not self.stop.wait(1.0):
            if self.source.startswith("nvml"):
                try:
                    self.util.append(float(torch.cuda.utilization(self.device)))
                except Exception:   # a missed sample is not worth ending the sampling for
                    pass
            elif sample := self.smi():
                self.util.append(sample[0])
                self.mem.append(sample[1])

    def summary(self) -> dict:
        return {"util_source": self.source, "util_samples": len(self.util),
                "util_mean_pct": round(statistics.mean(self.util), 1) if self.util else "",
                "util_max_pct": max(self.util, default=""), "smi_mem_used_max_mib": max(self.mem, default="")}


def prepared_omniglot(params: dict, mirror: Path, work: Path) -> Path:
    """Omniglot split as the profile's ``prepare.omniglot`` says, from the local mirror."""
    raw = fetch_archives(OMNIGLOT_ARCHIVES, work / "raw", mirror, progress=False)
    out = work / "prepared"
    prepare_omniglot(raw, out, **dict(params["prepare"]["omniglot"]), workers=os.cpu_count() or 2)
    return out


def one_slice(params: dict, algorithm: str, prepared: Path, device: torch.device, seconds: float,
              eval_tasks: int) -> dict:
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    cfg = resolved_run_config(params, spec)
    training, ev = cfg["training"], cfg["evaluate"]
    seed_everything(spec.seed, int(training.get("threads", 0)))
    configure_process(device)   # cuDNN autotuner, peak-memory reset: what a training process does
    train = load_split(prepared, "train")
    curve = load_split(prepared, curve_split_name(prepared)).to(device)
    algo = build_algorithm(spec, cfg, tuple(train.images.shape[2:]), device)
    shots, queries = algo.train_episode_shape
    sampler = EpisodeSampler(train.images.to(device), spec.ways, shots, queries, seed=spec.seed,
                             counts=train.counts)

    clock, state, util = Deadline(seconds), Progress(), Utilisation(device) if device.type == "cuda" else None
    if util:
        util.start()
    started = time.perf_counter()
    try:
        meta_train(algo, sampler, curve, spec, training, device, False, state=state, save=clock)
    except SliceOver:
        pass
    wall = time.perf_counter() - started
    if util:
        util.stop.set()
        util.join()
    if clock.warm is None or state.iteration <= clock.warm[0]:
        raise RuntimeError(f"{algorithm}: {state.iteration} iterations in {seconds} s, too few for a rate "
                           f"after the warm-up; raise --slice-seconds")
    rate = (state.iteration - clock.warm[0]) / (state.seconds - clock.warm[1])
    train_peak = peak_memory_mb(device)

    with autocast(device, training.get("autocast", "none")):
        m = min(eval_tasks, int(training.get("curve_tasks", 20)))
        t = time.perf_counter()
        curve_point(algo, curve, spec, {**training, "curve_tasks": m}, device)
        curve_s = (time.perf_counter() - t) * int(training.get("curve_tasks", 20)) / m
        test = load_split(prepared, ev.get("split", "test"))
        n = min(eval_tasks, int(ev["num_tasks"]))
        t = time.perf_counter()
        evaluate(algo, test.images, spec.ways, spec.shots, int(ev["queries"]), n, int(ev["seed"]),
                 modes=tuple(ev["modes"]), device=device, progress=False, counts=test.counts)
        eval_s = (time.perf_counter() - t) * int(ev["num_tasks"]) / n

    iters, curve_every = algo.meta_iters, int(training.get("curve_every", 0)) or algo.meta_iters
    train_s, curves_s = iters / rate, (iters // curve_every) * curve_s
    last = state.history[-1] if state.history else {}
    return {"algorithm": algorithm, "setting": spec.setting, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "engine": algo.engine, "autocast": training.get("autocast", "none"), "meta_batch": algo.meta_batch,
            "slice_seconds": seconds, "slice_wall_s": round(wall, 1), "iterations": state.iteration,
            "iters_per_s": round(rate, 2), "tasks_per_s": round(rate * algo.meta_batch, 1),
            "meta_iters": iters, "curve_every": curve_every, "curve_tasks": training.get("curve_tasks"),
            "curve_tasks_timed": m,
            "curve_point_s": round(curve_s, 2), "eval_num_tasks": ev["num_tasks"], "eval_tasks_timed": n,
            "eval_modes": " ".join(ev["modes"]), "eval_full_s": round(eval_s, 1),
            "train_h": round(train_s / 3600, 2), "curves_h": round(curves_s / 3600, 2),
            "eval_h": round(eval_s / 3600, 2), "full_cell_h": round((train_s + curves_s + eval_s) / 3600, 2),
            "train_peak_memory_mib": train_peak, "peak_memory_mib": peak_memory_mb(device),
            "slice_train_loss": round(last.get("train_loss", float("nan")), 4),
            "slice_train_acc": round(last.get("train_acc", float("nan")), 4),
            **(util.summary() if util else {"util_source": "n/a (cpu)"})}


def write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slice-seconds", type=float, default=120.0,
                    help="training wall time per algorithm (default 120: 4 minutes for MAML + Reptile)")
    ap.add_argument("--algorithms", nargs="+", default=["maml", "reptile"])
    ap.add_argument("--profile", default=str(REPO / "profiles" / "paper.yaml"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--allow-cpu", action="store_true", help="let --device cpu run (to test this script)")
    ap.add_argument("--eval-tasks", type=int, default=200, help="evaluation tasks timed (then scaled)")
    ap.add_argument("--prepared", type=Path, help="a prepared Omniglot directory (default: prepare one)")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "gpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu" and not args.allow_cpu:
        ap.error("--device cpu measures nothing this report is for; add --allow-cpu to test the script")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_slice: no CUDA device (torch {torch.__version__}); this is meant for a GPU machine")
    params = load_params(args.profile)
    params["training"]["device"] = device.type
    mirror = Path(os.environ.get("GBML_OMNIGLOT_MIRROR") or REPO / params["data"]["omniglot"]["mirror"])
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gbml-slice-") as work:
        prepared = args.prepared or prepared_omniglot(params, mirror.resolve(), Path(work))
        rows = []
        for name in args.algorithms:   # one failing algorithm does not stop the other's slice
            print(f"gpu_slice: {name}, {args.slice_seconds:g} s on {device} ...", flush=True)
            try:
                rows.append(one_slice(params, name, prepared, device, args.slice_seconds, args.eval_tasks))
            except Exception as err:
                traceback.print_exc()
                rows.append({"algorithm": name, "error": f"{type(err).__name__}: {err}"})
            print("  " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
            write_rows(args.out / "slice.csv", rows)   # after each: a timeout later keeps this one
    print(f"gpu_slice: wrote {args.out / 'slice.csv'}")
    if any("error" in r for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
