"""Resuming a killed training run (src/gbml/train.py, "Resuming"; src/gbml/checkpoints.py): a real training process is
SIGKILLed at an arbitrary point after its first resume checkpoint; running it again continues
from that checkpoint in the same MLflow run and ends bitwise-equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config

REPO = Path(__file__).resolve().parents[1]
# One training run in its own process: argv = run spec (json), config (json), prepared dir, run dir, store.
DRIVER = """
import json, sys
from pathlib import Path
from gbml.config import RunSpec
from gbml.tracking import Tracker
from gbml.train import train_run
spec, cfg = RunSpec(**json.loads(sys.argv[1])), json.loads(sys.argv[2])
root = Path(sys.argv[5])
tracker = Tracker("sqlite:///" + str(root / "mlruns.db"), "resume-test", root / "mlartifacts")
train_run(spec, cfg, Path(sys.argv[3]), Path(sys.argv[4]), tracker=tracker, progress=False)
"""


def config(spec: RunSpec) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["maml"].update(meta_iters=150, meta_batch=2)
    params["reptile"].update(meta_iters=150, meta_batch=2, eval_inner_iters=3)
    params["pretrain"].update(meta_iters=150, meta_batch=8)
    params["mamlpp"].update(meta_iters=150, iters_per_epoch=30, meta_batch=2, inner_steps=2,
                            eval_inner_steps=2, msl_epochs=2, first_order_epochs=2, ensemble_top_n=2)
    params["training"].update(log_every=10, curve_every=30, curve_tasks=2, threads=1, checkpoint_every=7)
    return resolved_run_config(params, spec)


def start(spec: RunSpec, cfg: dict, prepared: Path, run_dir: Path, root: Path,
          reuse: bool = False) -> subprocess.Popen:
    """``reuse``: a finished MLflow run of the same configuration may stand in for training
    (gbml's default; off here, so that every run trains or resumes)."""
    args = [json.dumps(spec.__dict__), json.dumps(cfg), str(prepared), str(run_dir), str(root)]
    env = dict(os.environ, GBML_REUSE_RUNS="1" if reuse else "0")
    return subprocess.Popen([sys.executable, "-c", DRIVER, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_after_first_checkpoint(proc: subprocess.Popen, resume_file: Path, delay: float) -> None:
    deadline = time.monotonic() + 120
    while not resume_file.exists():
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no resume checkpoint within 120 s"
        time.sleep(0.02)
    time.sleep(delay)   # an arbitrary point after it: mid-iteration, mid-curve point or mid-save
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["maml", "reptile", "mamlpp", "pretrain"])
def test_a_killed_run_resumes_to_the_bitwise_same_parameters_in_the_same_mlflow_run(algorithm, maml_dir, tmp_path):
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    cfg = config(spec)
    uninterrupted = start(spec, cfg, maml_dir, tmp_path / "a" / "run", tmp_path / "a")
    assert uninterrupted.wait() == 0, uninterrupted.stdout.read()

    run_dir = tmp_path / "b" / "run"
    killed = start(spec, cfg, maml_dir, run_dir, tmp_path / "b")
    kill_after_first_checkpoint(killed, tmp_path / "b" / "run.partial" / "resume.pt",
                                delay=random.Random(algorithm).uniform(0.0, 0.5))
    assert killed.returncode == -signal.SIGKILL and not run_dir.exists()
    first_run_id = torch.load(tmp_path / "b" / "run.partial" / "resume.pt", weights_only=True)["mlflow_run_id"]

    resumed = start(spec, cfg, maml_dir, run_dir, tmp_path / "b")
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    assert "resuming at iteration" in out
    assert not (tmp_path / "b" / "run.partial").exists()

    a, b = weights(tmp_path / "a" / "run"), weights(run_dir)
    for part in ("model", "optimizer", "adam_state", "inner_lrs", "head"):
        if part in a:
            assert_bitwise_equal(a[part], b[part])
    assert json.loads((tmp_path / "a" / "run" / "history.json").read_text()) == \
        json.loads((run_dir / "history.json").read_text())
    if algorithm == "mamlpp":   # the checkpoint ensemble survives the kill too
        assert (tmp_path / "a" / "run" / "ensemble" / "members.json").read_text() == \
            (run_dir / "ensemble" / "members.json").read_text()
        assert sorted(p.name for p in (run_dir / "ensemble").iterdir()) == \
            sorted(p.name for p in (tmp_path / "a" / "run" / "ensemble").iterdir())

    # One MLflow run, the one the killed process started, with every step once.
    from mlflow.tracking import MlflowClient
    client = MlflowClient("sqlite:///" + str(tmp_path / "b" / "mlruns.db"))
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    assert run_id == first_run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 150


def assert_bitwise_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_bitwise_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_bitwise_equal(x, y)
    else:
        assert a == b


def test_a_resume_checkpoint_from_another_configuration_is_discarded_with_a_message(maml_dir, tmp_path, capsys):
    from gbml.train import train_run
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    cfg = config(spec)
    partial = tmp_path / "run.partial"
    partial.mkdir()
    torch.save({"key": "another configuration"}, partial / "resume.pt")
    cfg["algorithm"]["meta_iters"] = 4
    train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)
    assert "discarding" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and not partial.exists()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["reptile", "mamlpp"])
def test_writing_resume_checkpoints_changes_nothing_the_run_computes(algorithm, maml_dir, tmp_path):
    from gbml.train import train_run
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    results = []
    for every in (0, 3):
        cfg = config(spec)
        cfg["algorithm"]["meta_iters"] = 12 if algorithm == "reptile" else 60
        cfg["training"]["checkpoint_every"] = every
        train_run(spec, cfg, maml_dir, tmp_path / str(every), progress=False)
        results.append(weights(tmp_path / str(every)))
    assert_bitwise_equal(*results)


# The run directory's swap into place, killed (os._exit: no clean-up runs) at each point of the
# window between "training finished" and "the run is done". argv[6] names the point.
DIE_IN_WINDOW = """
import os, pathlib, sys
run_dir = pathlib.Path(sys.argv[4]).resolve()
point = sys.argv[6]
real_rename, real_replace = pathlib.Path.rename, os.replace

def moving(src, dst, move):
    src, dst = pathlib.Path(src).resolve(), pathlib.Path(dst).resolve()
    if point == "before-swap" and dst == run_dir:
        os._exit(137)                 # logged to MLflow; the run directory not yet in place
    if point == "mid-swap" and src == run_dir:
        move()
        os._exit(137)                 # the previous run directory set aside, the new one not in yet
    result = move()
    if point == "after-swap" and dst == run_dir:
        os._exit(137)                 # in place, its clean-up not done
    return result

pathlib.Path.rename = lambda self, target: moving(self, target, lambda: real_rename(self, target))
os.replace = lambda src, dst, **kw: moving(src, dst, lambda: real_replace(src, dst, **kw))
""" + DRIVER


@pytest.mark.slow
@pytest.mark.parametrize("point, reuse", [("before-swap", False), ("mid-swap", False), ("after-swap", False),
                                          ("before-swap", True), ("after-swap", True)])
def test_a_kill_while_the_run_directory_is_swapped_in_loses_no_training(point, reuse, maml_dir, tmp_path):
    """Resumed at the last iteration, or (``reuse``, gbml's default) restored from the MLflow run
    it had already logged; either way nothing is left beside the run directory."""
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    cfg = config(spec)
    cfg["algorithm"]["meta_iters"] = 20
    run_dir, root = tmp_path / "run", tmp_path
    if point == "mid-swap":   # a previous run directory to set aside (an earlier, shorter run)
        previous = dict(cfg, algorithm={**cfg["algorithm"], "meta_iters": 10})
        assert start(spec, previous, maml_dir, run_dir, root).wait() == 0
    args = [json.dumps(spec.__dict__), json.dumps(cfg), str(maml_dir), str(run_dir), str(root), point]
    killed = subprocess.run([sys.executable, "-c", DIE_IN_WINDOW, *args], env=dict(os.environ, GBML_REUSE_RUNS="0"),
                            capture_output=True, text=True)
    assert killed.returncode == 137, killed.stdout + killed.stderr

    again = start(spec, cfg, maml_dir, run_dir, root, reuse=reuse)
    out = again.communicate()[0]
    assert again.returncode == 0, out
    assert ("reused MLflow run" if reuse else "resuming at iteration 20") in out, f"the run started over:\n{out}"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.pt", "config.json", "history.json", "learning_curve.png", "run.json"]
    assert [p.name for p in root.iterdir() if p.name.startswith((".run", "run."))] == []   # no leftovers
    uninterrupted = tmp_path / "uninterrupted"
    assert start(spec, cfg, maml_dir, uninterrupted / "run", uninterrupted).wait() == 0
    assert_bitwise_equal(weights(uninterrupted / "run")["model"], weights(run_dir)["model"])
    from mlflow.tracking import MlflowClient
    client = MlflowClient("sqlite:///" + str(root / "mlruns.db"))
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 20   # every step once
