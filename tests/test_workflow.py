"""The Snakemake workflow: validated against the same schema gbml enforces, and running exactly
the `gbml` commands dvc.yaml runs, for the default and the paper profile."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from gbml.config import ConfigError, load_params
from gbml.schema import SCHEMA_PATH, render, validate_params
from test_pipeline_e2e import REPO, copy_repo, run


def test_the_committed_schema_is_the_one_gbml_enforces():
    assert (REPO / SCHEMA_PATH).read_text() == render(), "run `gbml schema`"


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/cpu.yaml", "profiles/paper.yaml"])
def test_the_committed_profiles_are_valid(profile):
    validate_params(load_params(REPO / profile))


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["maml"].update(inner_lrr=0.1), r"maml: .*'inner_lrr' was unexpected"),
    (lambda p: p["reptile"].update(inner_iters="five"), r"reptile.inner_iters: 'five' is not of type 'integer'"),
    (lambda p: p["grid"].update(ways=[5]), r"grid: .*'ways' was unexpected"),
    (lambda p: p["grid"]["omniglot"].update(ways=[1]), r"grid.omniglot.ways.0: 1 is less than the minimum of 2"),
    (lambda p: p["mamlpp"]["settings"].update({"omniglot-5way": {}}), r"mamlpp.settings: 'omniglot-5way' does not match"),
    (lambda p: p["model"]["miniimagenet"].update(downsample="avgpool"), r"model.miniimagenet.downsample: 'avgpool'"),
    (lambda p: p.update(maml_fast={"variant_of": "maml", "msl": True}), r"maml_fast"),
])
def test_a_bad_params_file_is_rejected_naming_the_key(edit, message):
    params = load_params(REPO / "profiles" / "paper.yaml")
    edit(params)
    with pytest.raises(ConfigError, match=message):
        validate_params(params)


def test_the_paper_profiles_variants_validate_against_their_base_algorithm():
    params = load_params(REPO / "profiles" / "paper.yaml")
    params["maml_msl"]["inner_iters"] = 3           # a Reptile key in a MAML++ variant
    with pytest.raises(ConfigError, match="maml_msl"):
        validate_params(params)


def commands(lines: list[str]) -> set[str]:
    """gbml command lines without log redirection and progress-bar flags (which change no output)."""
    return {re.sub(r" > \S+ 2>&1$", "", line).replace("gbml --quiet ", "gbml ").strip() for line in lines}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_snakemake_runs_exactly_the_gbml_commands_dvc_runs(tmp_path, profile):
    dest = copy_repo(tmp_path, yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text()))
    dvc = re.findall(r"^> (gbml .*)$", run(["dvc", "repro", "--dry", "--force"], dest), re.M)
    smk = re.findall(r"Shell command: (gbml .*)$",
                     run([sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--printshellcmds"], dest), re.M)
    assert len(smk) == len(dvc) > 5
    assert commands(smk) == commands(dvc)
