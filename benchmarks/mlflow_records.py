"""What issue 21's MLflow records add to a training or evaluation stage, call by call, on this
machine: the saved view checked on the experiment, the dataset inputs (the DVC hash of the prepared
directory included), the checkpoint's registration with its aliases, and the system-metrics sampler
(started, one sample, one send, stopped). Medians of interleaved rounds against a fresh SQLite store.

    python benchmarks/mlflow_records.py [--prepared data/prepared/omniglot] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gbml.lineage import dvc_dir_md5, split_inputs
from gbml.model_registry import register
from gbml.system_metrics import Sampler
from gbml.tracking import GRID_COLUMNS, Tracker


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared/omniglot"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracker = Tracker(f"sqlite:///{root / 'mlruns.db'}", "bench", root / "mlartifacts", view=GRID_COLUMNS)
        (root / "ckpt").mkdir()
        (root / "ckpt" / "checkpoint.pt").write_bytes(b"0" * 1000)
        times: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            run_id = tracker.start_run(f"run{round_}", {}, {})
            tracker.log_dir(run_id, root / "ckpt")
            summary = {"run": {"algorithm": "maml", "dataset": "omniglot", "ways": 5, "shots": 1, "seed": round_},
                       "final_val_acc": 0.5 + round_ / 100, "curve_split": "val"}
            sampler = None

            def sample_and_send():
                nonlocal sampler
                sampler = Sampler(tracker, run_id)
                sampler.sample()
                sampler.send()

            steps = {
                "saved view checked (Tracker opened)": lambda: Tracker(tracker.uri, "bench", root / "mlartifacts",
                                                                       view=GRID_COLUMNS),
                "DVC hash of the prepared directory": lambda: dvc_dir_md5(args.prepared),
                "dataset inputs logged (hash included)": lambda: tracker.log_inputs(
                    run_id, split_inputs(args.prepared, ("train", "val"))),
                "system metrics: start, one sample, one send": sample_and_send,
                "checkpoint registered, aliases moved": lambda: register(tracker, run_id, {"profile": "bench"}, summary),
            }
            for name, call in steps.items():
                times.setdefault(name, []).append(timed(call))
            tracker.finish(run_id)
        print(f"{'step':<48} {'median ms':>10} {'max ms':>8}   ({args.rounds} rounds, {args.prepared})")
        for name, values in times.items():
            print(f"{name:<48} {1000 * statistics.median(values):>10.1f} {1000 * max(values):>8.1f}")


if __name__ == "__main__":
    main()
