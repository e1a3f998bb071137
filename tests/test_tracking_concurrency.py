"""Parallel jobs (Snakemake --cores N, SLURM) share one SQLite MLflow store: writers that start
at the same instant on a fresh store all land, whole, in one experiment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

WRITER = """
import sys, time
from pathlib import Path
from gbml.tracking import Tracker
uri, root, index, start = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
time.sleep(max(0.0, start - time.time()))          # every writer starts at once
tracker = Tracker(uri, "gbml-concurrency", root / "mlartifacts")
run_id = tracker.start_run(f"writer-{index}", {"writer": index}, {"a": {"b": index}, "c": list(range(3))})
for step in range(0, 300, 30):                     # many small transactions, like a training run
    tracker.log_metrics(run_id, [("loss", 1.0 / (step + 1), s) for s in range(step, step + 30)])
    tracker.set_tags(run_id, {"last_step": step})
tracker.finish(run_id)
"""


@pytest.mark.parametrize("writers", [6])
def test_concurrent_writers_on_a_fresh_sqlite_store_all_land(tmp_path: Path, writers: int):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    start = time.time() + 8            # after every interpreter has imported mlflow
    env = {**os.environ, "GBML_MLFLOW_RETRY_SECONDS": "120"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(tmp_path), str(i), str(start)],
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(writers)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * writers, "\n".join(errors)[-3000:]

    client = MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments() if e.name == "gbml-concurrency"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"writer-{i}" for i in range(writers))
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["last_step"] == "270"
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 300


def test_a_busy_store_is_retried_and_other_errors_are_not(monkeypatch):
    from gbml import tracking_store

    monkeypatch.setattr(tracking_store.time, "sleep", lambda s: None)
    attempts = []

    def busy_twice():
        attempts.append(1)
        if len(attempts) <= 2:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"
    assert tracking_store.retrying(busy_twice) == "ok" and len(attempts) == 3

    def broken():
        attempts.append(1)
        raise RuntimeError("no such table: runs")
    attempts.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking_store.retrying(broken)
    assert len(attempts) == 1


SWEEP_JOB = """
import sys, time, yaml
from pathlib import Path
from gbml.tracking import Tracker
uri, root, start = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
params = yaml.safe_load(Path(sys.argv[4]).read_text())
tracker = Tracker(uri, "gbml-sweep", root / "mlartifacts")     # the store exists: no init lock below
time.sleep(max(0.0, start - time.time()))                      # every job looks for the parent at once
print(tracker.sweep_run(params, "omniglot"))
"""


def test_jobs_of_one_sweep_starting_at_the_same_instant_share_one_parent_run(tmp_path: Path):
    from gbml.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    Tracker(uri, "gbml-sweep", tmp_path / "mlartifacts")
    start = time.time() + 10
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP_JOB, uri, str(tmp_path), str(start),
                               str(Path(__file__).resolve().parents[1] / "params.yaml")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(err for _, err in outs)[-3000:]
    assert len({out.strip() for out, _ in outs}) == 1
