"""The `gbml` command line: help for every stage, clear errors, safe profile switching."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gbml.cli import main
from gbml.cli_parser import parser
from gbml.config import RunSpec
from gbml.errors import Fix
from gbml.steps import how_to_run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["fetch", "prepare", "train", "evaluate", "report", "profile"])
def test_every_stage_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert len(capsys.readouterr().out) > 200


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_profile_switch_replaces_params_with_the_profile(project):
    assert main(["--root", str(project), "profile", "paper"]) == 0
    assert (project / "params.yaml").read_text() == (project / "profiles" / "paper.yaml").read_text()


def test_profile_switch_refuses_to_discard_local_edits(project, capsys):
    edited = (project / "params.yaml").read_text().replace("meta_iters:", "meta_iters: 7  # was", 1)
    (project / "params.yaml").write_text(edited)
    assert main(["--root", str(project), "profile", "paper"]) == 2
    assert "has edits that are in no profile" in capsys.readouterr().err
    assert (project / "params.yaml").read_text() == edited


def test_unknown_profile_lists_the_available_ones(project, capsys):
    assert main(["--root", str(project), "profile", "gpu"]) == 2
    assert "available: cpu, paper" in capsys.readouterr().err


def test_fetch_without_any_working_source_says_what_was_tried(project, capsys, monkeypatch):
    monkeypatch.setenv("GBML_OMNIGLOT_MIRROR", str(project / "no-such-mirror"))
    params = (project / "params.yaml").read_text().replace("timeout_s: 60", "timeout_s: 2")
    (project / "params.yaml").write_text(params)
    from gbml.data import fetch
    archive = fetch.Archive("images_background.zip", "http://127.0.0.1:9/images_background.zip", "0" * 32)
    monkeypatch.setattr(fetch, "OMNIGLOT_ARCHIVES", (archive,))  # unreachable URL
    assert main(["--root", str(project), "--quiet", "fetch"]) == 2
    err = capsys.readouterr().err
    assert "no-such-mirror" in err and "127.0.0.1:9" in err and "GBML_OMNIGLOT_MIRROR" in err
    assert not (project / "data" / "raw" / "omniglot").exists()


@pytest.mark.parametrize("fix, says", [
    (Fix("train", RunSpec("maml", "omniglot", 5, 1, 0)),
     "`dvc repro train_omniglot@maml-omniglot-5-1-0` (or `gbml train --algorithm maml --dataset omniglot "
     "--ways 5 --shots 1 --seed 0`)"),
    (Fix("train", force=True), "`dvc repro --force train_<dataset>@<run>` for each run"),
    (Fix("prepare", "omniglot", force=True), "`dvc repro --force prepare` (or `gbml prepare --dataset omniglot`)"),
    (Fix("prepare", "miniimagenet"), "`dvc repro prepare_miniimagenet` (or `gbml prepare --dataset miniimagenet`)"),
    (Fix("study", "mamlpp_ablation"), "`gbml study mamlpp_ablation` with each unit's flags"),
])
def test_the_library_names_the_step_to_run_and_the_cli_says_how(fix, says):
    """The library knows no DVC stage name: its errors carry the step (``Fix``); the CLI renders
    the stage of dvc.yaml and the gbml command."""
    assert says in how_to_run(fix)


def test_every_stage_the_cli_names_is_a_stage_of_dvc_yaml():
    import yaml
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for fix in (Fix("fetch", "omniglot"), Fix("prepare", "omniglot"), Fix("prepare", "miniimagenet"),
                Fix("train", RunSpec("maml", "omniglot", 5, 1, 0)), Fix("evaluate", RunSpec("anil", "omniglot", 5, 1, 0))):
        stage = how_to_run(fix).split("`")[1].split()[-1].split("@")[0]
        assert stage in stages, stage


def test_an_error_with_a_fix_prints_how_to_run_it(project, capsys):
    assert main(["--root", str(project), "--quiet", "evaluate", "--algorithm", "maml", "--dataset", "omniglot",
                 "--ways", "5", "--shots", "1", "--seed", "0", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "To fix: `dvc repro train_omniglot@maml-omniglot-5-1-0`" in err, err
