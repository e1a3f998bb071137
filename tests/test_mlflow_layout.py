"""Eight training jobs at once on one MLflow store, as `snakemake --cores 8` or a SLURM array
runs them: every run and every metric step lands, once, under the one parent run of their sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS, SEEDS = ["maml", "fomaml", "anil", "reptile"], [0, 1]


def tiny_grid() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "layout"
    params["grid"].update(algorithms=ALGORITHMS, seeds=SEEDS)
    for algorithm in ALGORITHMS:
        params[algorithm]["meta_iters"] = 20
    params["training"].update(log_every=5, curve_every=10, curve_tasks=2, threads=1)
    return params


@pytest.mark.slow
def test_eight_concurrent_training_processes_all_land_whole_under_one_sweep(maml_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_grid()))
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "omniglot").symlink_to(maml_dir)
    env = {**os.environ, "GBML_REUSE_RUNS": "0"}
    env.pop("GBML_MLFLOW_URI", None)
    jobs = [subprocess.Popen([sys.executable, "-m", "gbml.cli", "--quiet", "--root", str(tmp_path), "train",
                              "--algorithm", a, "--ways", "5", "--shots", "1", "--seed", str(s)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for a in ALGORITHMS for s in SEEDS]
    logs = [job.communicate(timeout=900)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 8, "\n".join(logs)[-4000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiments = [e for e in client.search_experiments() if e.name.startswith("gbml-layout")]
    assert [e.name for e in experiments] == ["gbml-layout-omniglot"]
    runs = client.search_runs([experiments[0].experiment_id])
    parents = [r for r in runs if "gbml.sweep" in r.data.tags]
    assert len(parents) == 1, "parallel jobs of one sweep must share one parent run"
    children = [r for r in runs if r not in parents]
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{a}-omniglot-5w1s-seed{s}" for a in ALGORITHMS for s in SEEDS)
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = json.loads((tmp_path / "runs" / run.info.run_name / "history.json").read_text())
        for key in {k for row in history for k in row} - {"step"}:
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert logged == [(row["step"], row[key]) for row in history if key in row], (run.info.run_name, key)
