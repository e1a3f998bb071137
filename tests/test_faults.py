"""Fault injection: each fault gets a clear message and leaves no partial output.

The matrix of issue 8, and where each case is tested:

* bad checksum, an HTML page where a zip was expected, a truncated zip, a zip with ``..`` or
  absolute paths, a missing mirror directory: tests/test_fetch.py
* a corrupt prepared-data file: tests/test_omniglot_prepare.py
* NaN/inf loss (stop, or skip and count) and a full disk while writing a checkpoint:
  tests/test_train.py
* a killed training run: tests/test_resume.py
* 8 concurrent training processes on one MLflow store: tests/test_mlflow_layout.py
* a checkpoint from an incompatible configuration, and the MLflow store unavailable (before a
  stage starts: it fails at once; after training: nothing is lost, the same command logs the run
  later): here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config
from gbml.evaluate import IncompatibleCheckpoint, evaluate_run
from gbml.tracking import StoreUnavailable, Tracker
from gbml.train import RESUME, train_run

REPO = Path(__file__).resolve().parents[1]
SPEC = RunSpec("maml", "omniglot", 5, 1, 0)


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["maml"].update(meta_iters=6, meta_batch=2)
    params["training"].update(log_every=2, curve_every=3, curve_tasks=2, threads=1, checkpoint_every=2)
    params["evaluate"].update(num_tasks=4)
    return params


@pytest.fixture
def trained(maml_dir, tmp_path) -> Path:
    run_dir = tmp_path / "runs" / SPEC.name
    train_run(SPEC, resolved_run_config(tiny_params(), SPEC), maml_dir, run_dir, progress=False)
    return run_dir


# --- a checkpoint from an incompatible configuration -------------------------------------------

def test_evaluating_a_run_under_settings_it_was_not_trained_with_names_each_difference(trained, maml_dir, tmp_path):
    params = tiny_params()
    params["model"]["omniglot"]["hidden"] = 32
    params["maml"]["inner_steps"] = 5
    with pytest.raises(IncompatibleCheckpoint, match=(
            r"trained under another configuration.*algorithm.inner_steps: trained with 1, params.yaml now says 5; "
            r"model.hidden: trained with 64, params.yaml now says 32.*dvc repro train_omniglot@maml-omniglot-5-1-0")):
        evaluate_run(SPEC, resolved_run_config(params, SPEC), maml_dir, trained, tmp_path / "evals", progress=False)
    assert not (tmp_path / "evals").exists() and not (tmp_path / "evals.tmp").exists()


def test_evaluation_settings_may_change_without_retraining(trained, maml_dir, tmp_path):
    params = tiny_params()
    params["evaluate"]["num_tasks"] = 2
    metrics = evaluate_run(SPEC, resolved_run_config(params, SPEC), maml_dir, trained, tmp_path / "evals",
                           progress=False)
    assert metrics["num_tasks"] == 2


@pytest.mark.parametrize("damage", ["truncate", "other_model"])
def test_a_checkpoint_that_does_not_load_is_a_clear_error_not_a_traceback(damage, trained, maml_dir, tmp_path):
    path = trained / "checkpoint.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:   # a checkpoint of another architecture under the right config (e.g. another gbml version)
        state = torch.load(path, weights_only=True)
        state["model"]["classifier.weight"] = torch.zeros(3, 7)
        torch.save(state, path)
    with pytest.raises(IncompatibleCheckpoint, match=r"checkpoint.pt does not load into the maml model.*Train the run again"):
        evaluate_run(SPEC, resolved_run_config(tiny_params(), SPEC), maml_dir, trained, tmp_path / "evals",
                     progress=False)
    assert not (tmp_path / "evals").exists()


# --- the MLflow store unavailable ---------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_does_not_answer_stops_training_at_once_before_any_work(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gbml.cli", "--root", str(root), "train", "--algorithm", "maml",
                          "--ways", "5", "--shots", "1", "--seed", "0"], capture_output=True, text=True,
                         env={"GBML_MLFLOW_URI": f"http://127.0.0.1:{closed_port()}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert "the MLflow store http://127.0.0.1:" in out.stderr and "unavailable before anything ran" in out.stderr
    assert "--no-mlflow" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - start < 60          # not after MLflow's minutes of HTTP retries
    assert not (root / "runs").exists()


def test_a_store_that_cannot_be_opened_is_named_with_the_fix(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable, match=r"not-a-directory/mlruns.db is unavailable before anything ran.*"
                                                r"mlflow.tracking_uri.*GBML_MLFLOW_URI"):
        Tracker(f"sqlite:///{blocker}/mlruns.db", "x", tmp_path / "mlartifacts")


class StoreGoesAway:
    """A tracker whose store disappears at the end of training, half-way through logging."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def __getattr__(self, name):
        return getattr(self.tracker, name)

    def log_metrics(self, run_id, rows, skip_logged=False):
        rows = list(rows)
        self.tracker.log_metrics(run_id, rows[: len(rows) // 2], skip_logged)
        raise ConnectionError("Connection refused")


def test_a_store_lost_during_training_loses_nothing_and_the_same_command_logs_the_run_later(
        maml_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GBML_REUSE_RUNS", "0")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlruns.db'}", "faults", tmp_path / "mlartifacts")
    cfg, run_dir = resolved_run_config(tiny_params(), SPEC), tmp_path / "runs" / SPEC.name
    with pytest.raises(StoreUnavailable, match=r"training finished \(6 meta-iterations\).*Nothing is lost.*"
                                                r"run the same command again once the store is reachable"):
        train_run(SPEC, cfg, maml_dir, run_dir, tracker=StoreGoesAway(tracker), progress=False)
    partial = run_dir.with_name(run_dir.name + ".partial")
    assert not run_dir.exists() and (partial / RESUME).is_file()
    assert torch.load(partial / RESUME, weights_only=True)["progress"]["iteration"] == 6
    run_id = torch.load(partial / RESUME, weights_only=True)["mlflow_run_id"]

    def no_training(*args):
        raise AssertionError("the finished run was trained again")
    monkeypatch.setattr("gbml.algorithms.maml.MAML.meta_step", no_training)
    summary = train_run(SPEC, cfg, maml_dir, run_dir, tracker=tracker, progress=False)
    assert "resuming at iteration 6" in capsys.readouterr().out
    assert summary["mlflow_run_id"] == run_id and not partial.exists() and (run_dir / "checkpoint.pt").is_file()
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = json.loads((run_dir / "history.json").read_text())
    for key in ("train_loss", "train_acc"):
        steps = [m.step for m in tracker.client.get_metric_history(run_id, key)]
        assert sorted(steps) == [row["step"] for row in history]       # every step once: no duplicates
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1
