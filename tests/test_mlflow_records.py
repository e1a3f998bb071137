"""What each training and evaluation run leaves in MLflow besides its metrics: system metrics and
peak memory, the exact prepared data it read (dataset inputs with the manifest's sha256 and the DVC
hash), and its checkpoint registered in the Model Registry, loadable with one call."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config
from gbml.data.tasks import EpisodeSampler
from gbml.data.prepared import load_split
from gbml.evaluate import evaluate_run
from gbml.lineage import dvc_dir_md5
from gbml.model_registry import load_model, model_name
from gbml.tracking import Tracker
from gbml.train import train_run

REPO = Path(__file__).resolve().parents[1]
SPECS = [RunSpec("maml", "omniglot", 5, 1, seed) for seed in (0, 1)]


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "records"
    params["maml"].update(meta_iters=6, meta_batch=2)
    params["training"].update(log_every=2, curve_every=3, curve_tasks=2, threads=1)
    params["evaluate"].update(num_tasks=4)
    return params


@pytest.fixture(scope="module")
def store(maml_dir, tmp_path_factory, monkeypatch_module):
    """Two seeds trained and evaluated into one store, sampling system metrics every 0.2 s."""
    monkeypatch_module.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    root = tmp_path_factory.mktemp("records")
    tracker = Tracker(f"sqlite:///{root / 'mlruns.db'}", "gbml-records-omniglot", root / "mlartifacts")
    runs = {}
    for spec in SPECS:
        cfg = resolved_run_config(tiny_params(), spec)
        summary = train_run(spec, cfg, maml_dir, root / "runs" / spec.name, tracker=tracker, progress=False)
        evaluate_run(spec, cfg, maml_dir, root / "runs" / spec.name, root / "evals" / spec.name, tracker=tracker,
                     progress=False)
        runs[spec.seed] = summary["mlflow_run_id"]
    return tracker, root, runs


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_training_and_evaluation_log_system_metrics_and_peak_memory(store):
    tracker, _, runs = store
    run = tracker.client.get_run(runs[0])
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/process_memory_rss_megabytes"):
        steps = [step for step, _ in tracker.metric_history(runs[0], key)]
        assert len(steps) >= 2 and steps == list(range(len(steps))), key   # training's, then evaluation's
    rss = [v for _, v in tracker.metric_history(runs[0], "system/process_memory_rss_megabytes")]
    assert all(10 < v < 24_000 for v in rss)
    assert run.data.metrics["train_peak_memory_mb"] > 10 and run.data.metrics["eval_peak_memory_mb"] > 10


def test_a_sampler_that_cannot_reach_the_store_keeps_its_samples_and_never_stops_the_work(store):
    from gbml.system_metrics import Sampler

    tracker, _, runs = store

    class Gone:
        def __getattr__(self, name):
            return getattr(tracker, name)

        def log_metrics(self, *args, **kwargs):
            raise OSError("store gone")

    sampler = Sampler(Gone(), runs[0])
    sampler.sample()
    assert sampler.send() is False and sampler.rows   # kept for the next send
    sampler.tracker = tracker
    assert sampler.send() is True and not sampler.rows


def test_each_run_names_the_exact_prepared_data_it_read(store, maml_dir):
    tracker, _, runs = store
    manifest = json.loads((maml_dir / "manifest.json").read_text())
    inputs = {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"]): i.dataset
              for i in tracker.client.get_run(runs[0]).inputs.dataset_inputs}
    assert set(inputs) == {("omniglot/train", "training"), ("omniglot/val", "validation"),
                           ("omniglot/test", "evaluation")}
    for (name, _), dataset in inputs.items():
        split = name.split("/")[1]
        profile = json.loads(dataset.profile)
        assert profile["sha256"] == manifest["sha256"][f"{split}.npy"]
        assert profile["sha256"] == hashlib.sha256((maml_dir / f"{split}.npy").read_bytes()).hexdigest()
        assert dataset.digest == profile["sha256"][:16]
        assert profile["manifest_sha256"] == hashlib.sha256((maml_dir / "manifest.json").read_bytes()).hexdigest()
        assert profile["dvc_md5"] == dvc_dir_md5(maml_dir)
    assert tracker.client.get_run(runs[0]).data.tags["gbml.data.dvc_md5"] == dvc_dir_md5(maml_dir)


def dvc_add(data: Path, dvcignore: Path | None = None) -> str:
    """The hash `dvc add` records for ``data``, in a fresh repository around it (with ``dvcignore``)."""
    root, dvc = data.parent, str(Path(sys.executable).with_name("dvc"))
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    if dvcignore:
        shutil.copy(dvcignore, root / ".dvcignore")
    subprocess.run([dvc, "add", "-q", data.name], cwd=root, check=True, capture_output=True)
    return yaml.safe_load((root / f"{data.name}.dvc").read_text())["outs"][0]["md5"]


def test_the_dvc_hash_is_the_one_dvc_itself_records(maml_dir, tmp_path):
    """An independent computation: `dvc add` of a copy of the prepared directory."""
    data = tmp_path / "prepared"
    shutil.copytree(maml_dir, data)
    assert dvc_dir_md5(data) == dvc_add(data)


def test_snakemakes_marker_in_a_directory_output_is_not_part_of_the_data_for_either_engine(maml_dir, tmp_path):
    data = tmp_path / "prepared"
    shutil.copytree(maml_dir, data)
    unmarked = dvc_dir_md5(data)
    (data / ".snakemake_timestamp").write_text("")
    assert dvc_dir_md5(data) == unmarked == dvc_add(data, dvcignore=REPO / ".dvcignore")   # the project's own


def test_every_finished_run_is_a_registered_version_and_best_is_the_best_validated(store):
    tracker, _, runs = store
    name = model_name("records", SPECS[0])
    assert name == "gbml-records-omniglot-maml-5w1s"
    versions = {v.run_id: v for v in tracker.client.search_model_versions(f"name = '{name}'")}
    assert set(versions) == set(runs.values())
    held_out = {seed: tracker.client.get_run(run_id).data.metrics["val_acc"] for seed, run_id in runs.items()}
    best_seed = max(held_out, key=lambda s: (held_out[s], -s))
    assert tracker.client.get_model_version_by_alias(name, "best").run_id == runs[best_seed]
    for seed, run_id in runs.items():
        assert tracker.client.get_model_version_by_alias(name, f"seed{seed}").run_id == run_id
        assert versions[run_id].tags["seed"] == str(seed)


def test_registering_again_adds_no_version(store):
    from gbml.model_registry import register

    tracker, root, runs = store
    summary = json.loads((root / "runs" / SPECS[0].name / "run.json").read_text())
    cfg = json.loads((root / "runs" / SPECS[0].name / "config.json").read_text())
    before = len(tracker.client.search_model_versions(f"name = '{model_name('records', SPECS[0])}'"))
    register(tracker, runs[0], cfg, summary)
    assert len(tracker.client.search_model_versions(f"name = '{model_name('records', SPECS[0])}'")) == before


def test_one_call_loads_a_registered_checkpoint_ready_to_adapt(store, maml_dir):
    tracker, root, runs = store
    name = model_name("records", SPECS[0])
    best = tracker.client.get_model_version_by_alias(name, "best")
    algorithm = load_model(f"models:/{name}@best", tracking_uri=tracker.uri)
    trained = torch.load(root / "runs" / best.tags["run_name"] / "checkpoint.pt", weights_only=True)
    state = algorithm.model.state_dict()
    assert set(state) == set(trained["model"]) and all(torch.equal(trained["model"][k], v) for k, v in state.items())

    task = EpisodeSampler(load_split(maml_dir, "test").images, 5, 1, 5, seed=0).tasks_at(range(1))
    adapted = algorithm.adapt(task.support_x, task.support_y, None)
    assert algorithm.predict(adapted, task.query_x).shape == (1, 25, 5)
    again = load_model(root / "runs" / best.tags["run_name"])   # a run directory loads the same way
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in state.items())
