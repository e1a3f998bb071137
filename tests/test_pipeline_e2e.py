"""End to end: `dvc repro` on a tiny params override in a temporary copy of the repository
produces the report, its numbers are the ones MLflow holds, and DVC re-runs only what a
change touches."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gbml.config import ALGORITHMS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tiny_params(mirror: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "e2e"
    params["data"]["omniglot"]["mirror"] = str(mirror)
    params["grid"].update(seeds=[0])   # every algorithm
    params["training"].update(log_every=5, curve_every=10, curve_tasks=4, threads=1)
    for algorithm in ("maml", "fomaml", "anil", "pretrain"):
        params[algorithm]["meta_iters"] = 20
    params["mamlpp"].update(meta_iters=20, iters_per_epoch=5, ensemble_top_n=2)
    params["reptile"].update(meta_iters=20, eval_inner_iters=5)
    params["sine"].update(maml_iters=20, reptile_iters=40, test_tasks=8, eval_steps=8, figure_steps=[0, 4, 8])
    params["evaluate"]["num_tasks"] = 20
    # freeze_tasks = evaluation's tasks: with nothing frozen the study must score as evals/ does
    params["studies"]["feature_reuse"].update(similarity_tasks=3, queries=5, freeze_tasks=20)
    params["studies"]["gradient_combinations"].update(arms=["g1", "g2", "g1_g2"], seeds=[0], meta_iters=10,
                                                      eval_every=5, eval_tasks=4)
    params["studies"]["minibatch_overlap"].update(samplings=["cycle"], inner_iters=[4], seeds=[0], meta_iters=5,
                                                  eval_every=5, eval_tasks=4)
    params["studies"]["taylor_terms"].update(seeds=[0], tasks=2, alphas=[1e-11, 1e-10, 0.003])
    # The MAML++ ablation's baseline and fixed arms, from the studies profile, shrunk.
    studies = yaml.safe_load((REPO / "profiles" / "studies.yaml").read_text())
    for arm in ("maml_strided", "mamlpp_strided"):
        params[arm] = {**studies[arm], "meta_iters": 6, "iters_per_epoch": 3, "meta_batch": 2, "inner_steps": 2,
                       "eval_inner_steps": 2, "msl_epochs": 1, "first_order_epochs": 1, "ensemble_top_n": 1}
    params["studies"]["mamlpp_ablation"].update(arms=["maml_strided", "mamlpp_strided"], seeds=[0], log_every=2,
                                                eval_tasks=4)
    return params


def run(cmd: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("GBML_MLFLOW_URI", None)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout if stdout_only else out.stdout + out.stderr


def copy_repo(dest: Path, params: dict) -> Path:
    """The repository's files (as git sees them) in a fresh git repo, with the given params."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory, omniglot_mirror) -> Path:
    dest = copy_repo(tmp_path_factory.mktemp("repo"), tiny_params(omniglot_mirror))
    (dest / ".git" / "repro.log").write_text(run(["dvc", "repro"], dest))   # kept out of the work tree
    return dest


def test_paper_profile_dry_run_lists_the_full_grid(tmp_path):
    paper = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    dest = copy_repo(tmp_path, paper)
    plan = run(["dvc", "repro", "--dry", "--force"], dest)
    stages = set(re.findall(r"Running stage '([^']+)'", plan))
    algorithms = ("maml", "fomaml", "anil", "mamlpp", "reptile", "pretrain")
    omniglot = {f"{a}-omniglot-{w}-{k}-{s}" for a in algorithms for w in (5, 20) for k in (1, 5) for s in (0, 1, 2)}
    mini = {f"{a}-miniimagenet-5-{k}-{s}" for a in algorithms for k in (1, 5) for s in (0, 1, 2)}
    studied = ("maml-", "anil-")     # studies.feature_reuse.algorithms: each trained run measured
    arms = ("g1", "g2", "g1_g2", "g3", "g1_g2_g3", "g4", "g1_g2_g3_g4")   # Nichol et al.'s Figure 3, seed 0
    assert stages == ({"fetch", "prepare", "prepare_miniimagenet", "sine", "study_feature_reuse",
                       "study_gradient_combinations", "study_minibatch_overlap", "study_taylor_terms",
                       "study_mamlpp_ablation", "report"}
                      | {f"gradient_combinations@{arm}-0" for arm in arms}
                      | {f"mamlpp_ablation@{arm}-{seed}" for arm in ("maml", "maml_msl", "maml_lslr", "maml_bnwb_bnrs", "mamlpp")
                         for seed in (0, 1, 2)}
                      | {f"taylor_terms@{seed}" for seed in (0, 1, 2)}
                      | {f"minibatch_overlap@{v}-{s}-{k}-0" for v in ("reptile", "foml_shared", "foml_separate")
                         for s in ("cycle", "replacement") for k in (2, 4, 6, 8)}
                      | {f"{stage}_omniglot@{c}" for c in omniglot for stage in ("train", "evaluate")}
                      | {f"{stage}_miniimagenet@{c}" for c in mini for stage in ("train", "evaluate")}
                      | {f"feature_reuse_omniglot@{c}" for c in omniglot if c.startswith(studied)}
                      | {f"feature_reuse_miniimagenet@{c}" for c in mini if c.startswith(studied)})


def test_repro_produces_report_whose_numbers_match_mlflow(repo_copy):
    import mlflow

    report = (repo_copy / "reports" / "README.md").read_text()
    assert "profile: **e2e**" in report
    table = pd.read_csv(repo_copy / "reports" / "results.csv")
    assert set(table["algorithm"]) == set(ALGORITHMS)   # the five meta-learners and the baseline
    assert set(table["mode"]) == {"transductive", "non_transductive", "nil"}

    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-omniglot"], filter_string="tags.algorithm != ''")
    assert len(runs) == len(ALGORITHMS)
    for _, row in table.iterrows():
        run = runs[runs["run_id"] == row["mlflow_run_ids"]].iloc[0]
        assert row["accuracy_pct"] == pytest.approx(100 * run[f"metrics.test_acc_{row['mode']}"])
        assert f"{row['accuracy_pct']:.2f} ±" in report
    png = (repo_copy / "reports" / "figures" / "learning_curves_omniglot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_report_has_the_papers_tables_with_csv_twins_figures_run_links_and_dvc_plots(repo_copy):
    import mlflow
    from PIL import Image

    reports = repo_copy / "reports"
    readme = (reports / "README.md").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-omniglot"])
    maml = runs[runs["tags.algorithm"] == "maml"].iloc[0]

    cells = pd.read_csv(reports / "tables" / "reptile_table1.csv")
    ran = cells[cells.status == "run"]
    assert set(ran["row"]) == {"MAML + Transduction", "1st-order MAML + Transduction", "Reptile",
                               "Reptile + Transduction"} and set(ran["ways"]) == {5} and set(ran["shots"]) == {1}
    mine = ran[ran.row == "MAML + Transduction"].iloc[0]
    assert mine["ours_pct"] == pytest.approx(100 * maml["metrics.test_acc_transductive"])
    assert mine["paper_pct"] == 98.7 and mine["mlflow_run_ids"] == maml["run_id"]
    assert f"**{mine['ours_pct']:.2f}** ±" in readme
    assert (cells.status == "not run").sum() == 12 and "not run · paper 99.90 ± 0.10" in readme
    for key in ("reptile_table2", "mamlpp", "anil"):
        table = pd.read_csv(reports / "tables" / f"{key}.csv")
        assert table.status.str.startswith("not run").all()    # no such cell ran
        mini = table[table.dataset == "miniimagenet"]
        assert len(mini) and (mini.status == "not run: no Mini-ImageNet source configured").all()
    assert "**Mini-ImageNet: not run: no Mini-ImageNet source configured.** To run it, set" in readme
    assert f"/runs/{maml['run_id']}?workflowType=machine_learning)" in readme   # each row links to its MLflow run

    figures = sorted((reports / "figures").glob("*.png"))
    assert {f.name for f in figures} == {"learning_curves_omniglot.png", "accuracy_vs_paper.png",
                                         "evaluation_modes.png", "mamlpp_lslr.png", "mamlpp_lslr_epochs.png"}
    for figure in figures:
        assert f"(figures/{figure.name})" in readme
        with Image.open(figure) as image:
            image.verify()

    curves = pd.read_csv(reports / "plots" / "held_out_accuracy.csv")
    assert {r.split("-")[0] for r in curves["run"]} == set(ALGORITHMS)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo_copy, stdout_only=True))
    assert not shown.get("errors") and set(shown["data"]) == {"reports/plots/held_out_accuracy.csv",
                                                              "reports/plots/train_accuracy.csv"}


def test_mlflow_holds_one_experiment_per_dataset_a_sweep_parent_and_a_child_per_training_run(repo_copy):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo_copy / 'mlruns.db'}")
    assert {e.name for e in client.search_experiments()} >= {"gbml-e2e-omniglot", "gbml-e2e-sine"}
    experiment = client.get_experiment_by_name("gbml-e2e-omniglot")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "gbml.sweep" in r.data.tags]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and parents[0].info.run_name.startswith(f"sweep e2e omniglot: {len(ALGORITHMS)} algorithms x 5w1s x 1 seeds")
    assert sorted(r.info.run_name for r in children) == sorted(f"{a}-omniglot-5w1s-seed0" for a in ALGORITHMS)
    commit = run(["git", "rev-parse", "HEAD"], repo_copy, stdout_only=True).strip()
    for child in children:
        tags = child.data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert (tags["algorithm"], tags["dataset"], tags["ways"], tags["shots"], tags["seed"]) == (
            child.info.run_name.split("-")[0], "omniglot", "5", "1", "0")
        assert tags["evaluation_modes"] == "transductive,non_transductive,nil"
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["dvc_stage"] == f"train_omniglot@{tags['algorithm']}-omniglot-5-1-0"
        assert tags["dvc_stage_evaluate"] == f"evaluate_omniglot@{tags['algorithm']}-omniglot-5-1-0"
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.json", "checkpoint.pt", "learning_curve.png", "history.json", "evaluation"} <= artifacts
        assert {a.path for a in client.list_artifacts(child.info.run_id, "evaluation")} == {
            "evaluation/per_task.csv", "evaluation/metrics.json"}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium, or a visible skip where there is none (a fresh machine runs the
    README's test command without it); GBML_REQUIRE_CHROMIUM=1 (.ci/run) makes its absence a failure."""
    from mlflow_ui import CHROMIUM

    if shutil.which(CHROMIUM):
        return CHROMIUM
    if os.environ.get("GBML_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"GBML_REQUIRE_CHROMIUM=1 but there is no Chromium at {CHROMIUM}: apt-get install chromium")
    pytest.skip(f"no Chromium at {CHROMIUM}: the MLflow UI test needs a browser (apt-get install chromium, "
                "or GBML_CHROMIUM=<path>); .ci/run installs one and requires this test")


def test_the_reports_link_shows_every_run_of_the_grid_with_its_accuracies_without_a_click(chromium, repo_copy, tmp_path):
    """In a real browser (Debian's headless Chromium against `mlflow server` on the pipeline's store),
    first visit, nothing clicked: the experiment link the report gives lists every run, flat, with its
    algorithm, setting, seed and accuracies; a run link opens that run."""
    from mlflow.tracking import MlflowClient

    from mlflow_ui import js_number, mlflow_server, page_text, runs_table

    report = (repo_copy / "reports" / "README.md").read_text()
    experiment_link = re.search(r"omniglot: \[experiment \d+\]\(http://127\.0\.0\.1:5000/(#/[^)]+)\)", report).group(1)
    run_link = re.search(r"\[`[0-9a-f]{8}`\]\(http://127\.0\.0\.1:5000/(#/experiments/\d+/runs/[0-9a-f]+\?[^)]+)\)",
                         report).group(1)
    screenshot = keep(tmp_path / "mlflow-ui-omniglot.png")
    with mlflow_server(repo_copy / "mlruns.db", tmp_path) as url:
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("gbml-e2e-omniglot")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 1 + len(ALGORITHMS)                  # the sweep and its training runs
        cells = runs_table(f"{url}/{experiment_link}", len(runs), screenshot)
        run_name = client.get_run(run_link.rsplit("/", 1)[1].split("?")[0]).info.run_name
        shown = page_text(f"{url}/{run_link}", run_name, keep(tmp_path / "mlflow-ui-run.png"))
    assert run_name in shown and "test_acc_transductive" in shown
    assert "Evaluation runs" not in shown     # MLflow's GenAI sidebar: the run would be shown as one
    for r in runs:
        if "gbml.sweep" in r.data.tags:
            continue
        assert r.info.run_name in cells[(r.info.run_id, "attributes.`Run Name`")].splitlines()
        for tag in ("algorithm", "ways", "shots", "seed"):
            assert cells[(r.info.run_id, f"tags.`{tag}`")] == r.data.tags[tag], (r.info.run_name, tag)
        for metric in ("test_acc_transductive", "test_acc_non_transductive", "test_acc_nil", "val_acc"):
            assert cells[(r.info.run_id, f"metrics.`{metric}`")] == js_number(r.data.metrics[metric]), (
                r.info.run_name, metric)
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def keep(path: Path) -> Path:
    """Where a screenshot goes: ``path``, and a copy under GBML_TEST_ARTIFACTS (CI keeps that folder)
    once the test has written it -- registered here, copied at the end of the session."""
    KEPT.append(path)
    return path


KEPT: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def kept_screenshots():
    yield
    folder = os.environ.get("GBML_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for path in KEPT:
            if path.is_file():
                shutil.copy2(path, Path(folder) / path.name)


def test_mamlpp_is_scored_as_the_ensemble_of_its_best_validated_checkpoints(repo_copy):
    name = "mamlpp-omniglot-5w1s-seed0"
    members = json.loads((repo_copy / "runs" / name / "ensemble" / "members.json").read_text())
    history = json.loads((repo_copy / "runs" / name / "history.json").read_text())
    validated = sorted((r["val_acc"], -r["step"]) for r in history if "val_acc" in r)
    assert [m["step"] for m in members] == [-s for _, s in reversed(validated[-2:])]
    metrics = json.loads((repo_copy / "evals" / name / "metrics.json").read_text())
    assert metrics["ensemble_size"] == 2 and metrics["ensemble_steps"] == [m["step"] for m in members]


def test_the_sine_study_runs_in_the_pipeline_and_is_tracked_and_reported(repo_copy):
    import mlflow

    metrics = json.loads((repo_copy / "reports" / "sine" / "metrics.json").read_text())
    assert set(metrics["algorithms"]) == {"maml", "fomaml", "reptile", "pretrain", "random_init"}
    assert "## Sine-wave regression" in (repo_copy / "reports" / "README.md").read_text()
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo_copy, stdout_only=True))
    (workspace,) = shown.values()   # one revision: the workspace (DVC names it "" here)
    report_metrics = workspace["data"]["reports/metrics.json"]["data"]
    assert report_metrics["sine_mse_final"]["maml"] == pytest.approx(metrics["algorithms"]["maml"]["mse_final"], abs=1e-5)
    assert set(report_metrics["cells"]) == {f"{a}-omniglot-5w1s" for a in ALGORITHMS}
    assert "pretrain" in metrics["algorithms"] and "pretrained (joint training)" in \
        (repo_copy / "reports" / "README.md").read_text()   # the baseline's row of the sine study
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-sine"])
    assert len(runs) == 1 and runs.iloc[0]["metrics.mse_maml"] == pytest.approx(metrics["algorithms"]["maml"]["mse_mean"][-1])


def test_the_feature_reuse_study_runs_on_the_trained_runs_and_is_tracked_and_reported(repo_copy):
    import mlflow

    study = repo_copy / "reports" / "studies" / "feature_reuse"
    metrics = json.loads((study / "metrics.json").read_text())
    assert set(metrics["similarity"]) == {"maml", "anil"}
    similarity = pd.read_csv(study / "similarity.csv")
    assert len(similarity) == 2 * 3 * 5   # algorithms x tasks x layers (one seed)
    anil_body = similarity[(similarity.algorithm == "anil") & (similarity.layer != "head")]
    assert anil_body.cka.to_numpy() == pytest.approx(1.0, abs=1e-9)   # ANIL's inner loop never touches the body
    evaluated = json.loads((repo_copy / "evals" / "maml-omniglot-5w1s-seed0" / "metrics.json").read_text())
    as_trained = metrics["freezing"]["maml"]["omniglot-5w1s"]
    for mode in ("transductive", "non_transductive"):
        assert as_trained[mode]["0"]["mean"] == pytest.approx(evaluated[f"test_acc_{mode}"], abs=1e-9)
    assert (study / "freezing.png").read_bytes().startswith(b"\x89PNG")
    assert "## Feature reuse (Raghu et al. 2020" in (repo_copy / "reports" / "README.md").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-studies"], filter_string="tags.`gbml.study` = 'feature_reuse'")
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.similarity.maml.omniglot-5w1s.head.cka_mean"] == pytest.approx(
        metrics["similarity"]["maml"]["omniglot-5w1s"]["head"]["cka_mean"])


def test_the_gradient_combination_study_trains_its_arms_and_is_tracked_and_reported(repo_copy):
    import mlflow

    study = repo_copy / "reports" / "studies" / "gradient_combinations"
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["ran"] and set(metrics["final"]) == {"g1", "g2", "g1_g2"}
    assert set(metrics["differences"]) == {"g2-vs-g1", "g1_g2-vs-g1", "g1_g2-vs-g2"}
    curve = pd.read_csv(repo_copy / "studies" / "gradient_combinations" / "g1-seed0" / "curve.csv")
    assert sorted(curve.iteration.unique()) == [0, 5, 10] and len(curve) == 3 * 4
    # Every arm starts from the same initialisation and is scored on the same tasks.
    starts = [pd.read_csv(repo_copy / "studies" / "gradient_combinations" / f"{a}-seed0" / "curve.csv").query(
        "iteration == 0").accuracy.tolist() for a in ("g1", "g2", "g1_g2")]
    assert starts[0] == starts[1] == starts[2]
    assert (study / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "## Inner-loop gradient combinations (Nichol et al. 2018" in (repo_copy / "reports" / "README.md").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-studies"], filter_string="tags.`gbml.study` = 'gradient_combinations'")
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.final.g1_g2.accuracy"] == pytest.approx(metrics["final"]["g1_g2"]["accuracy"])


def test_the_minibatch_overlap_study_trains_each_variant_and_is_reported(repo_copy):
    study = repo_copy / "reports" / "studies" / "minibatch_overlap"
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["ran"] and set(metrics["final"]) == {"reptile", "foml_shared", "foml_separate"}
    assert set(metrics["differences"]["foml_separate-vs-foml_shared"]["cycle"]) == {"4"}
    assert len(pd.read_csv(study / "final.csv")) == 3
    assert (study / "overlap.png").read_bytes().startswith(b"\x89PNG")
    assert "## Minibatch overlap in first-order MAML" in (repo_copy / "reports" / "README.md").read_text()


def test_the_taylor_terms_study_is_measured_tracked_and_reported(repo_copy):
    import mlflow

    study = repo_copy / "reports" / "studies" / "taylor_terms"
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["ran"] and set(metrics["errors"]) == {"maml", "fomaml", "reptile"}
    # At the smallest rates every task-order follows the expansion to first order (float64).
    for name, points in metrics["errors"].items():
        assert [p["alpha"] for p in points] == [1e-11, 1e-10, 0.003]
        assert points[0]["first_order_share"] == 1 and points[0]["error1_median"] < 1e-9
        assert metrics["validity"][name]["order0_slope"] == pytest.approx(1, abs=0.05)
    errors = pd.read_csv(repo_copy / "studies" / "taylor_terms" / "seed0" / "errors.csv")
    assert len(errors) == 2 * 2 * 3 * 3    # tasks x orders x alphas x algorithms
    assert (study / "taylor.png").read_bytes().startswith(b"\x89PNG")
    assert "## The Taylor expansion of the updates (Nichol et al. 2018, section 5.1)" in (repo_copy / "reports" / "README.md").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-studies"], filter_string="tags.`gbml.study` = 'taylor_terms'")
    assert len(runs) == 1


def test_the_mamlpp_ablation_trains_its_arms_through_the_pipeline_and_is_tracked_and_reported(repo_copy):
    import mlflow

    study = repo_copy / "reports" / "studies" / "mamlpp_ablation"
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["ran"] and set(metrics["arms"]) == {"maml_strided", "mamlpp_strided"}
    history = json.loads((repo_copy / "studies" / "mamlpp_ablation" / "mamlpp_strided-seed0" / "run" / "history.json").read_text())
    assert [r["step"] for r in history] == [2, 3, 4, 6]   # a loss point every log_every, validation each epoch
    assert any(k.startswith("lslr/") for k in history[-1])   # MAML++'s learned rates per epoch
    assert (study / "instability.png").read_bytes().startswith(b"\x89PNG")
    readme = (repo_copy / "reports" / "README.md").read_text()
    assert "## MAML's instability and MAML++'s switches" in readme and "| MAML++ (`mamlpp_strided`) |" in readme
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-studies"], filter_string="tags.`gbml.study` = 'mamlpp_ablation'")
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.arms.mamlpp_strided.accuracy"] == pytest.approx(metrics["arms"]["mamlpp_strided"]["accuracy"])


def test_mamlpp_logs_its_learned_rates_per_epoch_and_the_report_plots_them(repo_copy):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-omniglot"], filter_string="tags.algorithm = 'mamlpp'")
    client = mlflow.MlflowClient()
    keys = [k for k in client.get_run(runs.iloc[0]["run_id"]).data.metrics if k.startswith("lslr/")]
    assert keys and all(len(client.get_metric_history(runs.iloc[0]["run_id"], k)) == 4 for k in keys)   # 20 / 5 epochs
    assert (repo_copy / "reports" / "figures" / "mamlpp_lslr_epochs.png").read_bytes().startswith(b"\x89PNG")


def test_the_pipelines_log_shows_progress_as_whole_lines(repo_copy):
    log = (repo_copy / ".git" / "repro.log").read_text()
    progress = [line for line in log.splitlines() if re.match(r"\S+: \d+/\d+ (it|task) \(\d+%\)", line)]
    assert "maml-omniglot-5w1s-seed0: 20/20 it (100%)" in log and "evaluate: 20/20 task (100%)" in log
    assert "\r" not in log and len(progress) >= 2 * 2 * len(ALGORITHMS)   # each training and evaluation: start, end


def test_repro_with_nothing_changed_runs_nothing(repo_copy):
    out = run(["dvc", "repro"], repo_copy)
    assert "Running stage" not in out


def test_changing_one_algorithm_reruns_only_its_runs(repo_copy):
    # A real re-run, not `dvc repro --dry`: in dry mode DVC looks the changed stage up in its run
    # cache under the *old* dependency hashes, reports it "cached", and then lists its dependants
    # as unchanged, so a dry plan cannot show what a change re-runs.
    params_path = repo_copy / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["reptile"]["inner_lr"] = 0.002
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo_copy)
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"train_omniglot@reptile-omniglot-5-1-0", "evaluate_omniglot@reptile-omniglot-5-1-0", "report"}, out


# --- DVC experiments on the pipeline (last: they change the workspace) ---------------------------

def exp_show(repo: Path) -> pd.DataFrame:
    table = run(["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", r"Experiment|cells\.|maml\.inner_lr"],
                repo, stdout_only=True)
    return pd.read_csv(io.StringIO(table))


def mlflow_maml_runs(repo: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns.db'}")
    return mlflow.search_runs(experiment_names=["gbml-e2e-omniglot"], filter_string="tags.algorithm = 'maml'")


def test_dvc_experiments_run_queue_show_and_diff_on_the_pipeline(repo_copy):
    """`dvc exp run -S`, a queued sweep run two at a time, `dvc exp show` with the headline accuracies
    (each the one MLflow holds for that experiment's run) and `dvc plots diff` of two experiments."""
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"]):
        run(cmd, repo_copy)
    run(["dvc", "exp", "run", "-n", "lr2", "-S", "maml.inner_lr=0.2"], repo_copy)
    run(["dvc", "exp", "run", "--queue", "-S", "maml.inner_lr=0.1,0.3"], repo_copy)
    run(["dvc", "queue", "start", "-j", "2"], repo_copy)
    deadline = time.monotonic() + 1200
    while re.search(r"\b(Queued|Running)\b", status := run(["dvc", "queue", "status"], repo_copy)):
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 2, status

    shown = exp_show(repo_copy).dropna(subset=["Experiment"]).set_index("maml.inner_lr")
    assert sorted(shown.index) == [0.1, 0.2, 0.3]
    runs = mlflow_maml_runs(repo_copy)   # the queued experiments' temporary copies logged here too
    for lr, row in shown.iterrows():
        logged = runs[runs["params.algorithm.inner_lr"].astype(float) == lr]
        assert len(logged) == 1, (lr, runs["params.algorithm.inner_lr"].tolist())
        for mode in ("transductive", "non_transductive", "nil"):
            assert row[f"cells.maml-omniglot-5w1s.{mode}"] == pytest.approx(
                round(100 * logged.iloc[0][f"metrics.test_acc_{mode}"], 3))
    assert not list((repo_copy / ".dvc" / "tmp").rglob("mlruns.db"))

    first, second = shown.loc[0.1, "Experiment"], shown.loc[0.3, "Experiment"]
    plots = json.loads(run(["dvc", "plots", "diff", first, second, "--json"], repo_copy, stdout_only=True))
    (held_out,) = plots["data"]["reports/plots/held_out_accuracy.csv"]
    assert held_out["revisions"] == [first, second]
    curves = {(v["rev"], v["run"]) for v in held_out["content"]["data"]["values"]}
    assert {(first, "maml-omniglot-5w1s-seed0"), (second, "maml-omniglot-5w1s-seed0")} <= curves
