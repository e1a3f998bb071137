"""End to end on Mini-ImageNet's data path: `dvc repro` on a generated stand-in (pickle caches in
the layout of the real ones) trains, evaluates and reports every algorithm on 84x84 RGB images.
Its own module: a pipeline of its own, independent of test_pipeline_e2e.py's Omniglot one (and
ready to run beside it on another worker when the suite runs in parallel)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gbml.config import ALGORITHMS
from test_pipeline_e2e import copy_repo, run, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mini_repo(tmp_path_factory, omniglot_mirror) -> Path:
    """The pipeline on a generated Mini-ImageNet stand-in (pickle caches): every algorithm, a tiny
    2-way grid, MAML++ with the paper profile's 48-filter model override."""
    from miniimagenet_standin import make_standin

    classes = {"train": ["n01000001", "n01000002", "n01000003"], "val": ["n01000004", "n01000005"],
               "test": ["n01000006", "n01000007"]}
    standin = make_standin(tmp_path_factory.mktemp("standin"), classes, per_class=4)
    params = tiny_params(omniglot_mirror)
    params["grid"].update(algorithms=list(ALGORITHMS), omniglot={"ways": [], "shots": []},
                          miniimagenet={"ways": [2], "shots": [1]})
    params["data"]["miniimagenet"].update(source="pickle_cache", path=str(standin / "caches"),
                                          splits=str(standin / "reference"))
    params["reptile"].update(train_shots=2, inner_batch=2, eval_inner_batch=2)
    params["mamlpp"]["model"] = {"miniimagenet": {"hidden": 48}}
    params["evaluate"]["num_tasks"] = 10
    params["studies"]["feature_reuse"]["queries"] = 2   # the stand-in has 4 images per class
    for study in ("gradient_combinations", "minibatch_overlap", "taylor_terms", "mamlpp_ablation"):   # seeds []: not run
        params["studies"][study]["seeds"] = []
    dest = copy_repo(tmp_path_factory.mktemp("mini-repo"), params)
    run(["dvc", "repro"], dest)
    return dest


def test_the_pipeline_trains_and_reports_on_a_mini_imagenet_stand_in(mini_repo):
    import mlflow
    import torch

    manifest = json.loads((mini_repo / "data" / "prepared" / "miniimagenet" / "manifest.json").read_text())
    assert manifest["source"] == "pickle_cache" and manifest["split_sizes"] == {"train": 3, "val": 2, "test": 2}
    def first_conv(run_name):
        state = torch.load(mini_repo / "runs" / run_name / "checkpoint.pt", weights_only=True)
        return state["model"]["blocks.0.conv.weight"].shape
    assert first_conv("maml-miniimagenet-2w1s-seed0") == (32, 3, 3, 3)      # RGB in, model.miniimagenet's 32
    assert first_conv("mamlpp-miniimagenet-2w1s-seed0") == (48, 3, 3, 3)    # mamlpp.model.miniimagenet

    table = pd.read_csv(mini_repo / "reports" / "results.csv")
    assert set(zip(table.algorithm, table.dataset)) == {(a, "miniimagenet") for a in ALGORITHMS}
    mlflow.set_tracking_uri(f"sqlite:///{mini_repo / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["gbml-e2e-miniimagenet"],
                              filter_string="tags.algorithm != ''")     # the training runs, not their sweep
    for _, row in table.iterrows():
        run_ = runs[runs["run_id"] == row["mlflow_run_ids"]].iloc[0]
        assert row["accuracy_pct"] == pytest.approx(100 * run_[f"metrics.test_acc_{row['mode']}"])
    stages = run(["dvc", "stage", "list", "--name-only"], mini_repo, stdout_only=True).split()
    assert set(runs["tags.dvc_stage"]) == {f"train_miniimagenet@{a}-miniimagenet-2-1-0" for a in ALGORITHMS}
    assert set(runs["tags.dvc_stage"]) <= set(stages)    # the tag names the stage to re-run
    cells = pd.read_csv(mini_repo / "reports" / "tables" / "reptile_table2.csv")
    assert (cells.status == "not run").all()    # a source is configured; only 5-way cells are missing
    assert "no Mini-ImageNet source configured" not in (mini_repo / "reports" / "README.md").read_text()
    # Studies without seeds (the default profile's way of leaving the training studies out): no unit
    # stage runs, each summary says so, and so does the report.
    for study in ("gradient_combinations", "minibatch_overlap", "taylor_terms", "mamlpp_ablation"):
        summary = mini_repo / "reports" / "studies" / study
        assert [p.name for p in summary.iterdir()] == ["metrics.json"]
        assert json.loads((summary / "metrics.json").read_text())["ran"] is False
        assert not [p for p in (mini_repo / "studies" / study).iterdir() if p.name != "README.md"]
    assert (mini_repo / "reports" / "README.md").read_text().count("not run in this profile") == 4
