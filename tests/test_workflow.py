"""The Snakemake workflow: validated against the same schema gbml enforces, and running exactly
the `gbml` commands dvc.yaml runs, for the default and the paper profile."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from gbml.config import ConfigError, load_params
from gbml.schema import SCHEMA_PATH, render
from gbml.validation import validate_params
from test_pipeline_e2e import REPO, copy_repo, run


def test_the_committed_schema_is_the_one_gbml_enforces():
    assert (REPO / SCHEMA_PATH).read_text() == render(), "run `gbml schema`"


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/cpu.yaml", "profiles/studies.yaml", "profiles/paper.yaml"])
def test_the_committed_profiles_are_valid(profile):
    validate_params(load_params(REPO / profile))


def test_the_studies_profile_is_the_default_plus_the_studies_that_train_networks_of_their_own():
    """Same grid, settings and MLflow experiments as the default (so `dvc repro` reuses its runs);
    only the training studies, left out of the default, have seeds, and the only sections it adds
    are the MAML++ ablation's arms (variants the study trains, not grid entries)."""
    cpu, studies = (load_params(REPO / "profiles" / f"{name}.yaml") for name in ("cpu", "studies"))
    arms = set(studies["studies"]["mamlpp_ablation"]["arms"])
    assert set(studies) - set(cpu) == arms and all(studies[a]["variant_of"] == "mamlpp" for a in arms)
    assert not arms & set(studies["grid"]["algorithms"])
    assert {k: v for k, v in studies.items() if k != "studies" and k not in arms} == {
        k: v for k, v in cpu.items() if k != "studies"}
    for name in ("feature_reuse", "taylor_terms"):   # measured in the default pipeline already
        assert studies["studies"][name] == cpu["studies"][name]
    for name in ("gradient_combinations", "minibatch_overlap", "mamlpp_ablation"):
        assert cpu["studies"][name]["seeds"] == [] and studies["studies"][name]["seeds"]


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["maml"].update(inner_lrr=0.1), r"maml.inner_lrr: unknown key; allowed: .*inner_lr.*did you mean 'inner_lr'"),
    (lambda p: p["reptile"].update(inner_iters="five"), r"reptile.inner_iters: 'five' is not of type 'integer'"),
    (lambda p: p["grid"].update(ways=[5]), r"grid.ways: unknown key; allowed: algorithms, miniimagenet, omniglot, seeds"),
    (lambda p: p["grid"]["omniglot"].update(ways=[1]), r"grid.omniglot.ways.0: 1 is out of range; allowed: >= 2"),
    (lambda p: p["mamlpp"]["settings"].update({"omniglot-5way": {}}), r"mamlpp.settings: 'omniglot-5way' is not allowed; allowed: strings matching"),
    (lambda p: p["model"]["miniimagenet"].update(downsample="avgpool"),
     r"model.miniimagenet.downsample: 'avgpool' is not allowed; allowed: 'stride', 'maxpool'"),
    (lambda p: p.update(maml_fast={"variant_of": "maml", "msl": True}), r"maml_fast.msl: unknown key"),
    (lambda p: p.update(mam={"meta_lr": 0.1}), r"mam: unknown section; allowed: .*did you mean 'maml'"),
    (lambda p: p["maml"].update(meta_lr=-0.001), r"maml.meta_lr: -0.001 is out of range; allowed: > 0"),
    (lambda p: p["reptile"].update(inner_lr=0), r"reptile.inner_lr: 0 is out of range; allowed: > 0"),
    (lambda p: p["mamlpp"].update(meta_batch=0), r"mamlpp.meta_batch: 0 is out of range; allowed: >= 1"),
    (lambda p: p["evaluate"].update(modes=["transductive", "semi"]),
     r"evaluate.modes.1: 'semi' is not allowed; allowed: 'transductive', 'non_transductive', 'nil'"),
    (lambda p: p["grid"].update(cifar={"ways": [5], "shots": [1]}), r"grid.cifar: unknown key"),
    (lambda p: p["training"].update(device="gpu"), r"training.device: 'gpu' is not allowed; allowed: strings matching"),
])
def test_a_bad_params_file_is_rejected_naming_the_key_the_value_and_what_is_allowed(edit, message):
    params = load_params(REPO / "profiles" / "paper.yaml")
    edit(params)
    with pytest.raises(ConfigError, match=message):
        validate_params(params)


def test_every_problem_is_listed_not_just_the_first():
    params = load_params(REPO / "params.yaml")
    params["maml"]["meta_lr"], params["anil"]["inner_lr"], params["training"]["nonfinite"] = -1, -1, "ignore"
    with pytest.raises(ConfigError, match=r"3 problem\(s\)") as err:
        validate_params(params)
    assert all(key in str(err.value) for key in ("maml.meta_lr", "anil.inner_lr", "training.nonfinite"))


@pytest.mark.parametrize("edit, message", [
    # Omniglot's 50 validation characters feed the learning curve; its 423 test characters evaluation.
    (lambda p: p["grid"]["omniglot"].update(ways=[60]),
     r"grid.omniglot.ways: 60 is more than the 50 classes of omniglot's val split, which the learning curve "
     r"samples; allowed: at most 50"),
    (lambda p: p["grid"]["omniglot"].update(ways=[500]), r"500 is more than the 423 classes of omniglot's test split"),
    # Without validation characters the learning curve samples the test split (1623 - 1150 = 473).
    (lambda p: p["prepare"]["omniglot"].update(num_val=0, rotate_splits=[]) or p["grid"]["omniglot"].update(ways=[480]),
     r"480 is more than the 473 classes of omniglot's test split, which the learning curve samples"),
    # 20 drawings per character.
    (lambda p: p["grid"]["omniglot"].update(shots=[20]),
     r"omniglot-5w20s: 20 \+ 1 = 21 examples per class for evaluation \(grid.omniglot.shots plus evaluate.queries\), "
     r"but omniglot's test split has 20 per class; allowed: at most 20 in all"),
    (lambda p: p["evaluate"].update(queries=30), r"1 \+ 30 = 31 examples per class for evaluation"),
    (lambda p: p["reptile"].update(train_shots=25), r"25 \+ 0 = 25 examples per class for reptile's meta-training "
                                                    r"\(reptile.train_shots\), but omniglot's train split has 20"),
    (lambda p: p["maml"].update(train_queries=19) or p["grid"]["omniglot"].update(shots=[5]),
     r"5 \+ 19 = 24 examples per class for maml's meta-training \(grid.omniglot.shots plus maml.train_queries\)"),
    # Mini-ImageNet: 64 / 16 / 20 classes (the Ravi split).
    (lambda p: p["grid"]["miniimagenet"].update(ways=[20], shots=[1]),
     r"grid.miniimagenet.ways: 20 is more than the 16 classes of miniimagenet's val split"),
])
def test_ways_and_shots_are_checked_against_the_classes_and_examples_of_each_split_they_sample(edit, message):
    params = load_params(REPO / "params.yaml")
    edit(params)
    with pytest.raises(ConfigError, match=message):
        validate_params(params)


def test_the_largest_episodes_the_data_allows_are_accepted():
    params = load_params(REPO / "params.yaml")
    params["grid"]["omniglot"] = {"ways": [50], "shots": [19]}     # 50 val characters, 19 + 1 drawings
    params["reptile"]["train_shots"] = 20
    validate_params(params)


def test_gbml_check_exits_2_with_the_problem_before_running_anything(tmp_path, capsys):
    from gbml.cli import main

    params = load_params(REPO / "params.yaml")
    params["grid"]["omniglot"]["ways"] = [60]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    assert main(["--params", str(bad), "--root", str(tmp_path), "train", "--algorithm", "maml", "--ways", "60",
                 "--shots", "1", "--seed", "0"]) == 2
    assert "grid.omniglot.ways: 60" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["--params", str(REPO / "params.yaml"), "check"]) == 0
    assert "valid (12 training runs" in capsys.readouterr().out


def test_the_paper_profiles_variants_validate_against_their_base_algorithm():
    params = load_params(REPO / "profiles" / "paper.yaml")
    params["maml_msl"]["inner_iters"] = 3           # a Reptile key in a MAML++ variant
    with pytest.raises(ConfigError, match="maml_msl"):
        validate_params(params)


def commands(lines: list[str]) -> set[str]:
    """gbml command lines without log redirection, progress-bar flags (which change no output) and
    the report's ``--snakemake-benchmarks`` (Snakemake's own job records, which DVC has none of)."""
    return {re.sub(r" > \S+ 2>&1$", "", line).replace("gbml --quiet ", "gbml ")
            .replace(" --snakemake-benchmarks logs/benchmarks", "").strip() for line in lines}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_snakemake_runs_exactly_the_gbml_commands_dvc_runs(tmp_path, profile):
    dest = copy_repo(tmp_path, yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text()))
    dvc = re.findall(r"^> (gbml .*)$", run(["dvc", "repro", "--dry", "--force"], dest), re.M)
    smk = re.findall(r"Shell command: (gbml .*)$",
                     run([sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--printshellcmds"], dest), re.M)
    assert len(smk) == len(dvc) > 5
    assert commands(smk) == commands(dvc)
