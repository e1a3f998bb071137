"""Both workflow engines on the same tiny params: `snakemake --cores 2` produces what `dvc repro`
produces, and running one engine after the other reuses the MLflow runs instead of duplicating them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
import pytest

from test_pipeline_e2e import copy_repo, run, tiny_params

pytestmark = pytest.mark.slow


def engine_params(mirror: Path) -> dict:
    params = tiny_params(mirror)
    params["grid"]["algorithms"] = ["maml", "reptile"]
    params["studies"]["feature_reuse"].update(algorithms=["maml"], freeze_algorithms=["maml"])
    params["studies"]["gradient_combinations"].update(arms=["g1", "g1_g2"])
    params["studies"]["minibatch_overlap"].update(variants=["foml_separate"])
    params["studies"]["mamlpp_ablation"]["seeds"] = []   # its stages are DVC's and Snakemake's alike (test_workflow)
    return params


def snakemake(repo: Path) -> str:
    return run([sys.executable, "-m", "snakemake", "--cores", "2"], repo)


def mlflow_runs(repo: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns.db'}")
    return mlflow.search_runs(search_all_experiments=True)


def outputs(repo: Path) -> dict[str, bytes]:
    """Every file the pipeline writes, less what records when, where or under which MLflow run id
    it ran (run.json and metrics.json hold timings; Snakemake marks directory outputs with a
    .snakemake_timestamp file; each MLflow store has its own run ids)."""
    files = {}
    for top in ("runs", "evals", "studies", "reports/tables", "reports/sine", "reports/studies", "reports/results.csv"):
        paths = [repo / top] if (repo / top).is_file() else sorted((repo / top).rglob("*"))
        for path in paths:
            if not path.is_file() or path.name in ("run.json", "metrics.json", ".snakemake_timestamp"):
                continue
            data = path.read_bytes()
            if path.suffix == ".csv" and b"mlflow_run_ids" in data.split(b"\n", 1)[0]:
                data = pd.read_csv(path).drop(columns="mlflow_run_ids").to_csv(index=False).encode()
            files[str(path.relative_to(repo))] = data
    return files


@pytest.fixture(scope="module")
def engines(tmp_path_factory, omniglot_mirror):
    params = engine_params(omniglot_mirror)
    by_snakemake = copy_repo(tmp_path_factory.mktemp("snakemake"), params)
    by_dvc = copy_repo(tmp_path_factory.mktemp("dvc"), params)
    snakemake(by_snakemake)
    run(["dvc", "repro"], by_dvc)
    return by_snakemake, by_dvc


def test_snakemake_produces_what_dvc_repro_produces(engines):
    by_snakemake, by_dvc = engines
    ours, theirs = outputs(by_snakemake), outputs(by_dvc)
    assert sorted(ours) == sorted(theirs) and len(ours) > 10
    assert [name for name in ours if ours[name] != theirs[name]] == []     # CPU runs are deterministic
    metrics = [json.loads((repo / "reports" / "metrics.json").read_text()) for repo in engines]
    assert metrics[0] == metrics[1]
    assert (by_snakemake / "logs" / "train" / "maml-omniglot-5w1s-seed0.log").is_file()


def test_snakemake_benchmarks_each_training_and_evaluation_job_and_the_report_shows_them(engines):
    by_snakemake, by_dvc = engines   # before the next test re-runs each engine's report under the other
    records = pd.read_csv(by_snakemake / "reports" / "run_records.csv").set_index("run_name")
    assert sorted(records.index) == ["maml-omniglot-5w1s-seed0", "reptile-omniglot-5w1s-seed0"]
    for step in ("train", "evaluate"):
        for name in records.index:
            bench = pd.read_csv(by_snakemake / "logs" / "benchmarks" / step / f"{name}.tsv", sep="\t")
            assert records.loc[name, f"snakemake_{step}_s"] == pytest.approx(bench["s"].iloc[-1])
            assert records.loc[name, f"snakemake_{step}_max_rss_mb"] == pytest.approx(bench["max_rss"].iloc[-1])
    assert "| Snakemake train s |" in (by_snakemake / "reports" / "README.md").read_text()
    by_dvc_records = pd.read_csv(by_dvc / "reports" / "run_records.csv")
    assert by_dvc_records.filter(like="snakemake_").isna().all().all()   # DVC ran those jobs: no benchmark


def test_snakemake_job_logs_show_progress_as_lines(engines):
    log = (engines[0] / "logs" / "train" / "maml-omniglot-5w1s-seed0.log").read_text()
    assert "\r" not in log and "maml-omniglot-5w1s-seed0: 20/20 it (100%)" in log
    assert "evaluate: 20/20 task (100%)" in (engines[0] / "logs" / "evaluate" / "maml-omniglot-5w1s-seed0.log").read_text()


def test_each_engine_after_the_other_reuses_the_mlflow_runs(engines):
    by_snakemake, by_dvc = engines
    for repo, engine in ((by_snakemake, lambda r: run(["dvc", "repro"], r)), (by_dvc, snakemake)):
        before, files = mlflow_runs(repo), outputs(repo)
        out = engine(repo)
        assert sorted(mlflow_runs(repo)["run_id"]) == sorted(before["run_id"]), out    # no new MLflow run
        assert outputs(repo) == files
        # Neither engine knows what the other ran (no dvc.lock entries; no Snakemake metadata and
        # newer params stamps), so both re-run the steps: training, the sine study and the studies'
        # summaries restore their outputs from the MLflow run of the same configuration instead of
        # running again (the studies' per-run measurements, like evaluations, are simply re-run).
        logs = "".join(p.read_text() for p in (repo / "logs").rglob("*.log")) if engine is snakemake else ""
        reused = len(re.findall(r"reused MLflow run", out + logs))
        assert reused == 8, out    # 2 trainings, sine, the summaries of feature reuse, the 3 training studies, Taylor terms


def test_snakemake_report_bundles_the_tables_and_figures_with_captions(engines):
    by_snakemake = engines[0]
    run([sys.executable, "-m", "snakemake", "--report", "report.html"], by_snakemake)
    html = (by_snakemake / "report.html").read_text()
    for name in ("reptile_table1.csv", "results.csv", "accuracy_vs_paper.png", "learning_curves_omniglot.png",
                 "adaptation.png", "Paper tables", "Sine-wave study", "Each paper's table in its own layout"):
        assert name in html, name


# --- A real SLURM cluster (CI starts one with workflow/ci/local-slurm.sh) ------------------------

def slurm_cluster_answers() -> bool:
    if not shutil.which("sbatch"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, omniglot_mirror):
    if not slurm_cluster_answers():
        if os.environ.get("GBML_REQUIRE_SLURM") == "1":
            pytest.fail("GBML_REQUIRE_SLURM=1 but no SLURM cluster answers; start one with workflow/ci/local-slurm.sh")
        pytest.skip("no SLURM cluster here (start a one-node one as root: workflow/ci/local-slurm.sh start)")
    params = engine_params(omniglot_mirror)
    params["resources"]["train"]["gpus"] = 1          # the CI node advertises one (placeholder) GPU
    params["resources"]["slurm"]["account"] = "gbml"
    repo = copy_repo(tmp_path_factory.mktemp("slurm"), params)
    # The executor polls job states with sacct; if that ever hangs, SIGKILL (it ignores SIGTERM).
    # 15 min: the 12 jobs took over 7 on CI's 2 cores while another test file ran beside them.
    out = run(["timeout", "-s", "KILL", "900", sys.executable, "-m", "snakemake", "--workflow-profile",
               "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "2",
               "--seconds-between-status-checks", "2"], repo)
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    accounting = run(["sacct", "-X", "-P", "--name", run_id, "--format=JobID,State,Comment%200,Account,AllocTRES%200"],
                     repo, stdout_only=True)
    jobs = pd.DataFrame([line.split("|") for line in accounting.strip().splitlines()[1:]],
                        columns=["job", "state", "comment", "account", "tres"])
    return repo, jobs


def test_snakemake_submits_every_training_and_evaluation_job_to_slurm_with_its_resources(slurm_run):
    _, jobs = slurm_run
    jobs["rule"] = jobs.comment.str.extract(r"^rule_([a-z_]+?)(?:_wildcards|$)", expand=False)
    assert (jobs.state == "COMPLETED").all() and (jobs.account == "gbml").all(), jobs
    assert sorted(jobs.rule) == ["evaluate", "evaluate", "feature_reuse", "gradient_combinations",
                                 "gradient_combinations", "minibatch_overlap", "prepare", "prepare_miniimagenet", "sine",
                                 "taylor_terms", "train", "train"]
    for _, job in jobs.iterrows():
        tres = dict(item.split("=") for item in job.tres.split(","))
        assert tres["cpu"] == "1" and tres["mem"] == {"train": "4000M", "evaluate": "4000M",
                                                      "feature_reuse": "4000M"}.get(job.rule, "2000M")
        assert tres.get("gres/gpu") == ("1" if job.rule == "train" else None), job


def test_the_slurm_run_reports_what_the_local_run_reports(slurm_run, engines):
    repo, _ = slurm_run
    assert outputs(repo) == outputs(engines[1])
    assert json.loads((repo / "reports" / "metrics.json").read_text()) == json.loads(
        (engines[1] / "reports" / "metrics.json").read_text())


def test_snakemake_reruns_what_a_params_change_touches_as_dvc_does(engines):
    by_snakemake = engines[0]
    # Up to date first: an earlier test ran `dvc repro` here, which re-made the data after the
    # benchmark files that Snakemake counts among each job's outputs (README, Snakemake).
    snakemake(by_snakemake)
    params_path = by_snakemake / "params.yaml"
    original = params_path.read_text()
    try:
        params = yaml.safe_load(original)
        params["reptile"]["inner_lr"] = 0.002
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        plan = run([sys.executable, "-m", "snakemake", "--dry-run", "--cores", "2"], by_snakemake)
        jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.split("Job stats:")[1].split("Reasons")[0], re.M))
        # As test_pipeline_e2e's DVC test: only Reptile's training and evaluation, and the report.
        assert jobs == {"train": "1", "evaluate": "1", "report": "1", "all": "1", "total": "4"}, plan
        assert "output: runs/reptile-omniglot-5w1s-seed0" in plan and "output: runs/maml-" not in plan
    finally:
        params_path.write_text(original)
