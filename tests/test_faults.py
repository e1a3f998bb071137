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

Issue 17 adds:

* a checkpoint loaded onto another device type (the GPU crash): tests/test_devices.py;
* a kill while a run directory is swapped into place: tests/test_resume.py, and the atomic
  file and directory specification: tests/test_io.py;
* a params file that is not YAML, NaN or infinite settings, a 0 whose meaning the field declares
  (Reptile's ``train_shots``), bounds declared by the config dataclasses, a bug (not a user error)
  that must keep its traceback, and non-finite optimiser moments or learned rates: here.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gbml.checkpoints import RESUME
from gbml.config import RunSpec, resolved_run_config
from gbml.errors import Fix
from gbml.evaluate import evaluate_run
from gbml.trained_runs import IncompatibleCheckpoint
from gbml.tracking import Tracker
from gbml.tracking_store import StoreUnavailable
from gbml.train import train_run

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
            r"model.hidden: trained with 64, params.yaml now says 32.*Train it again")) as raised:
        evaluate_run(SPEC, resolved_run_config(params, SPEC), maml_dir, trained, tmp_path / "evals", progress=False)
    assert raised.value.fix == Fix("train", SPEC)   # the CLI: `dvc repro train_omniglot@maml-omniglot-5-1-0`
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]   # no evals/, no staging left behind


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


# --- bad input that used to get through (issue 17) ---------------------------------------------

def gbml_check(tmp_path, text: str, capsys) -> tuple[int, str]:
    from gbml.cli import main

    (tmp_path / "params.yaml").write_text(text)
    code = main(["--root", str(tmp_path), "check"])
    return code, capsys.readouterr().err


def test_a_params_file_that_is_not_yaml_is_one_line_naming_the_file_line_and_column(tmp_path, capsys):
    code, err = gbml_check(tmp_path, "profile: cpu\ngrid: [\n  algorithms: maml\n", capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(r"params\.yaml:4:1: not valid YAML: expected ',' or '\]', but got '<stream end>' "
                     r"\(while parsing a flow sequence that starts at line 2, column 7\)", err), err


@pytest.mark.parametrize("key, value", [("maml.inner_lr", ".nan"), ("maml.inner_lr", ".inf"),
                                        ("reptile.meta_step", "-.inf"), ("evaluate.num_tasks", ".nan")])
def test_nan_and_infinite_settings_are_rejected(key, value, tmp_path, capsys):
    section, name = key.split(".")
    text = (REPO / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params[section][name] = float(value.replace(".", "", 1) if value != ".nan" else "nan")
    code, err = gbml_check(tmp_path, yaml.safe_dump(params), capsys)
    assert code == 2 and f"{key}: " in err and "not a finite number" in err, err


def test_reptile_train_shots_0_means_the_settings_shots_as_in_the_reference(maml_dir, tmp_path):
    params = tiny_params()
    params["reptile"].update(train_shots=0, meta_iters=2, meta_batch=2, eval_inner_iters=2)
    from gbml.validation import validate_params
    validate_params(params)
    spec = RunSpec("reptile", "omniglot", 5, 1, 0)
    summary = train_run(spec, resolved_run_config(params, spec), maml_dir, tmp_path / "run", progress=False)
    assert summary["meta_iters"] == 2
    from gbml.algorithms.reptile import Reptile, ReptileConfig
    assert Reptile.episode_shape(ReptileConfig(train_shots=0), shots=5) == (5, 0)


def test_every_setting_of_every_config_dataclass_declares_its_allowed_values():
    """The schema's bounds come from the fields' declarations (gbml.fields), not from their names."""
    import dataclasses
    import typing

    from gbml.config import ALGORITHMS
    from gbml.fields import schema_of
    from gbml.sine import SineStudyConfig
    from gbml.studies.config import CONFIGS
    undeclared = [f"{cls.__name__}.{f.name}" for cls in {*(a.config for a in ALGORITHMS.values()), SineStudyConfig, *CONFIGS.values()}
                  for f in dataclasses.fields(cls)
                  if typing.get_type_hints(cls)[f.name] in (int, float, str) and schema_of(f) is None]
    assert undeclared == []


def test_a_zero_that_means_nothing_is_rejected_where_the_field_says_so(tmp_path, capsys):
    """MAML's train_queries may be 0 (a shared tail); MAML++'s may not: the rule is the field's, not its name's."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mamlpp"]["train_queries"] = 0
    code, err = gbml_check(tmp_path, yaml.safe_dump(params), capsys)
    assert code == 2 and "mamlpp.train_queries: 0 is out of range; allowed: >= 1" in err, err


def test_a_bug_keeps_its_traceback_only_gbml_errors_become_messages(tmp_path, monkeypatch, capsys):
    import gbml.cli
    from gbml.errors import PipelineError

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    args = ["--root", str(tmp_path), "check"]

    def raising(error):
        def cmd_check(*_):
            raise error
        return cmd_check

    monkeypatch.setattr(gbml.cli, "cmd_check", raising(ValueError("a bug in gbml")))
    with pytest.raises(ValueError, match="a bug in gbml"):
        gbml.cli.main(args)
    monkeypatch.setattr(gbml.cli, "cmd_check", raising(FileNotFoundError("a bug too")))
    with pytest.raises(FileNotFoundError):
        gbml.cli.main(args)
    monkeypatch.setattr(gbml.cli, "cmd_check", raising(PipelineError("the store is gone; start it")))
    assert gbml.cli.main(args) == 2
    assert capsys.readouterr().err.strip() == "gbml check: error: the store is gone; start it"


def poison_after_step(monkeypatch, cls, at_iteration: int, poison) -> None:
    real = cls.meta_step

    def meta_step(self, tasks, iteration):
        metrics = real(self, tasks, iteration)
        if iteration + 1 == at_iteration:
            with torch.no_grad():
                poison(self)
        return metrics
    monkeypatch.setattr(cls, meta_step.__name__, meta_step)


@pytest.mark.parametrize("algorithm", ["mamlpp", "reptile"])
def test_non_finite_learned_rates_or_optimiser_moments_stop_training(algorithm, maml_dir, tmp_path, monkeypatch):
    from gbml.algorithms.mamlpp import MAMLPlusPlus
    from gbml.algorithms.reptile import Reptile
    params = tiny_params()
    params["mamlpp"].update(meta_iters=6, iters_per_epoch=3, meta_batch=2, inner_steps=2, eval_inner_steps=2,
                            ensemble_top_n=0)
    params["reptile"].update(meta_iters=6, meta_batch=2)
    if algorithm == "mamlpp":   # a learned inner learning rate, not a parameter
        poison_after_step(monkeypatch, MAMLPlusPlus, 3, lambda a: next(iter(a.inner_lrs.values()))[0].fill_(math.nan))
    else:                       # Reptile's carried inner Adam moments
        poison_after_step(monkeypatch, Reptile, 3, lambda a: next(iter(a.adam_state["exp_avg_sq"].values())).fill_(math.inf))
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    with pytest.raises(RuntimeError, match=r"meta-iteration 3: .*not finite"):
        train_run(spec, resolved_run_config(params, spec), maml_dir, tmp_path / "run", progress=False)


@pytest.mark.parametrize("flags, edit, message", [
    (["--ways", "5", "--shots", "30"], None, r"30 \+ 1 = 31 examples per class for maml's meta-training \(--shots plus"),
    (["--ways", "5", "--shots", "0"], None, r"--ways 5 --shots 0: allowed: at least 2 ways and 1 shot"),
    (["--ways", "60", "--shots", "1"], None, r"--ways: 60 is more than the 50 classes of omniglot's val split"),
    (["--ways", "5", "--shots", "1"], ("anil", "head", "clasifier"), r"anil.head: the model has no parameters under 'clasifier'"),
])
def test_a_run_the_command_line_asks_for_is_checked_like_a_grid_cell(flags, edit, message, maml_dir, tmp_path, capsys):
    """``gbml train`` may be given ways and shots outside the grid: they meet the same checks, as
    messages (exit 2), before any work."""
    from gbml.cli import main

    params = tiny_params()
    algorithm = "maml"
    if edit:
        algorithm, key, value = edit
        params[algorithm][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = tmp_path / "data" / "prepared" / "omniglot"
    prepared.parent.mkdir(parents=True)
    prepared.symlink_to(maml_dir)
    code = main(["--root", str(tmp_path), "--quiet", "train", "--algorithm", algorithm, *flags, "--seed", "0",
                 "--no-mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_run_trained_before_a_setting_existed_scores_when_the_setting_is_at_its_default(trained, maml_dir, tmp_path):
    """Switches added later (the reference-network keys) do not orphan older runs: a key its
    config.json lacks counts as the default it was trained with; any other value still refuses."""
    config = json.loads((trained / "config.json").read_text())
    for key in ("init", "padding", "bn_scale"):
        del config["model"][key]
    config["algorithm"].pop("inner_bn", None)
    (trained / "config.json").write_text(json.dumps(config))
    params = tiny_params()
    params["maml"]["inner_bn"] = True                          # listed now, at its default
    metrics = evaluate_run(SPEC, resolved_run_config(params, SPEC), maml_dir, trained, tmp_path / "evals",
                           progress=False)
    assert metrics["num_tasks"] == params["evaluate"]["num_tasks"]
    params["model"]["omniglot"]["padding"] = "tensorflow"     # not what it was trained with
    with pytest.raises(IncompatibleCheckpoint,
                       match="model.padding: trained with 'symmetric', params.yaml now says 'tensorflow'"):
        evaluate_run(SPEC, resolved_run_config(params, SPEC), maml_dir, trained, tmp_path / "evals2", progress=False)
