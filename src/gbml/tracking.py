"""MLflow runs: the layout, logging and reuse. With ``gbml.tracking_store`` (the store itself: its
address, opening it, retries while it is busy), the home of everything gbml logs to MLflow;
``model_registry`` (registered checkpoints) and ``system_metrics`` (MLflow's monitors) log through it.

The store defaults to a SQLite file in the repository (``mlruns.db``) with artifacts under
``mlartifacts/``, both git-ignored; ``mlflow ui --backend-store-uri sqlite:///mlruns.db`` browses
it. The layout: one experiment per profile and dataset (``gbml-<profile>-<dataset>``); in it, one
parent run per sweep (the profile's grid on that dataset, see ``sweep_run``) whose children are
the training runs. Each training run is one MLflow run: training logs its parameters, learning
curve and checkpoint; evaluation logs into the same run (its id travels in the run directory), so
one MLflow run holds everything about one grid cell. Metrics are sent with ``log_batch`` (a few
calls per run, not one per number).

An unreachable store stops a stage before it does any work (``StoreUnavailable``). Training
talks to the store only when it starts and when it ends; a store lost in between costs nothing
but the final logging, which the same command does later (see ``gbml.train``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import mlflow
from mlflow.entities import Metric, Param, RunTag

from gbml.config import DATASETS, PipelineError, home_root, sweep_definition
from gbml.errors import Fix
from gbml.io import staged_dir
from gbml.run_keys import RUN_KEY_TAG, run_key
from gbml.tracking_store import RetryingClient, file_lock, is_transient, retrying, tracking_uri

MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracker_for(params: dict, root: Path, dataset: str) -> "Tracker":
    """The tracker params.yaml describes: one experiment per profile and dataset."""
    cfg = params.get("mlflow", {})
    name = cfg.get("experiment", "gbml-{profile}-{dataset}").format(
        profile=params.get("profile", "unnamed"), dataset=dataset)
    home = home_root(root)   # a queued DVC experiment logs into the user's store, not its temporary copy's
    return Tracker(tracking_uri(params, home), name, home / cfg.get("artifact_root", "mlartifacts"),
                   view=GRID_COLUMNS if dataset in DATASETS else ())


UI = "http://127.0.0.1:5000"   # `mlflow ui`'s default address

# The experiment page as it opens from the report's links: MLflow 3 lands on its GenAI overview
# unless the link asks for the model-training view, shows no metric or tag column until the user
# ticks them, and folds child runs under their sweep in its default sort. A saved view (an
# experiment tag ``mlflow.sharedViewState.<key>``, loaded by the link's ``viewStateShareKey``)
# fixes all three with no click: sorted by run name (flat), the grid's tags and accuracies shown.
# The link must carry no sort or filter of its own, or the UI skips the saved view.
VIEW_KEY = "gbml"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
GRID_COLUMNS = (("tags", "algorithm"), ("tags", "ways"), ("tags", "shots"), ("tags", "seed"),
                ("metrics", "test_acc_transductive"), ("metrics", "test_acc_non_transductive"),
                ("metrics", "test_acc_nil"), ("metrics", "val_acc"), ("tags", "dataset"),
                ("attributes", "Dataset"), ("attributes", "Models"))


def saved_view(columns: tuple[tuple[str, str], ...]) -> str:
    """The saved view's tag value: MLflow's envelope around the UI state (a JSON string in JSON)."""
    ids = [f"{group}.`{key}`" for group, key in columns]
    state = {"searchFilter": "", "orderByKey": "tags.`mlflow.runName`", "orderByAsc": True, "startTime": "ALL",
             "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
             "selectedColumns": ids, "columnOrder": ["tags.`mlflow.runName`", *ids] if ids else [],
             "columnWidths": {i: 190 for i in ids if i.startswith("metrics.")}, "runsHiddenMode": "SHOW_ALL",
             "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False, "groupBy": None,
             "groupsExpanded": {}, "useGroupedValuesInCharts": True, "hideEmptyCharts": True}
    return json.dumps({"name": "gbml: every run, flat", "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)})
PARENT_TAG = "mlflow.parentRunId"   # MLflow's own: the UI nests a run under this parent
SWEEP_TAG = "gbml.sweep"


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path, view: tuple[tuple[str, str], ...] = ()):
        self.client = RetryingClient(uri)
        self.uri, self.artifact_root = uri, Path(artifact_root)
        self.experiment_id = retrying(self._experiment_id, experiment, self.artifact_root)
        if view and self.client.get_experiment(self.experiment_id).tags.get(VIEW_TAG) != (value := saved_view(view)):
            self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, value)

    def _experiment_id(self, experiment: str, artifact_root: Path) -> str:
        # A job that loses the race to create the experiment fails on the unique name and, retried,
        # finds the winner's experiment.
        found = self.client._client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        artifact_root.mkdir(parents=True, exist_ok=True)
        return self.client._client.create_experiment(
            experiment, artifact_location=(artifact_root / experiment).resolve().as_uri())

    def start_run(self, run_name: str, tags: dict[str, Any], params: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items()})
        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def sweep_run(self, params: dict, dataset: str, tags: dict[str, Any] | None = None) -> str:
        """The parent run of the sweep that ``params`` defines on ``dataset`` (its profile and
        grid), created by whichever job needs it first. A lock beside the artifacts makes parallel
        jobs of one sweep (Snakemake, SLURM on a shared file system) share one parent; a changed
        grid is a new sweep."""
        definition = sweep_definition(params, dataset)
        key = run_key(definition)
        with file_lock(self.artifact_root / ".sweep.lock"):
            found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{key}'",
                                            order_by=["attributes.start_time ASC"], max_results=1)
            if found:
                return found[0].info.run_id
            cells = [f"{w}w{s}s" for w in definition["ways"] for s in definition["shots"]]
            name = (f"sweep {definition['profile']} {dataset}: {len(definition['algorithms'])} algorithms x "
                    f"{' '.join(cells)} x {len(definition['seeds'])} seeds")
            run_id = self.start_run(name, {**(tags or {}), SWEEP_TAG: key, "dataset": dataset,
                                           "profile": definition["profile"]}, {"grid": definition})
            self.finish(run_id)
            return run_id

    def log_metrics(self, run_id: str, rows: Iterable[tuple], skip_logged: bool = False) -> None:
        """Log ``(key, value, step)`` rows (or ``(key, value, step, timestamp_ms)``; now if not
        given) in batches; ``skip_logged`` leaves out the (key, step) pairs the run already has (a
        retried logging after the store went away half-way)."""
        now = int(time.time() * 1000)
        rows = list(rows)
        if skip_logged:
            logged = {(m.key, m.step) for key in {row[0] for row in rows}
                      for m in self.client.get_metric_history(run_id, key)}
            rows = [row for row in rows if (row[0], int(row[2])) not in logged]
        metrics = [Metric(k, float(v), int(at[0]) if at else now, int(step)) for k, v, step, *at in rows]
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + MAX_BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_inputs(self, run_id: str, inputs: list[dict]) -> None:
        """Record datasets the run read (``gbml.lineage.split_inputs``: name, digest, source,
        profile, context) as MLflow dataset inputs; the same input logged again is kept once."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        self.client.log_inputs(run_id, datasets=[
            DatasetInput(Dataset(name=i["name"], digest=i["digest"], source_type="local",
                                 source=json.dumps({"uri": i["source"]}), profile=json.dumps(i["profile"])),
                         tags=[InputTag("mlflow.data.context", i["context"])]) for i in inputs])
        self.set_tags(run_id, {"gbml.data.dvc_md5": inputs[0]["profile"]["dvc_md5"]} if inputs else {})

    def log_artifact(self, run_id: str, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def ui_link(self, run_id: str) -> str:
        """Where ``mlflow ui`` (default address) shows the run, in its model-training view (MLflow 3
        shows it among GenAI "evaluation runs" otherwise)."""
        return f"{UI}/#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"

    def experiment_link(self) -> str:
        """Where ``mlflow ui`` shows the experiment's runs as the saved view lays them out."""
        return f"{UI}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"

    def registered_versions(self, run_ids: Iterable[str]) -> dict[str, tuple[str, str, str]]:
        """Run id -> (registered model, version, where ``mlflow ui`` shows it) for the runs whose
        checkpoint is registered (``gbml.model_registry``); the newest version if several."""
        found = {}
        for run_id in run_ids:
            versions = self.client.search_model_versions(f"run_id = '{run_id}'")
            if versions:
                v = max(versions, key=lambda v: int(v.version))
                found[run_id] = (v.name, str(v.version), f"{UI}/#/models/{quote(v.name)}/versions/{v.version}")
        return found

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def has_run(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return True

    def reopen(self, run_id: str) -> bool:
        """Mark an interrupted run as running again, for a resumed training to continue it;
        False if the store no longer has it."""
        if not self.has_run(run_id):
            print(f"MLflow run {run_id} is not in the store {self.uri}; the resumed training logs a new run")
            return False
        self.client.update_run(run_id, status="RUNNING")
        return True

    def check_run(self, run_id: str) -> None:
        if not self.has_run(run_id):
            raise PipelineError(
                f"MLflow run {run_id} is not in the store {self.uri}. The store was probably "
                "deleted or moved after training; train the run again to record it.",
                fix=Fix("train", force=True))

    def runs(self, run_ids: list[str]):
        """The given runs as a DataFrame (``mlflow.search_runs``), one row per run."""
        quoted = ", ".join(f"'{r}'" for r in run_ids)
        mlflow.set_tracking_uri(self.uri)
        return retrying(mlflow.search_runs, experiment_ids=[self.experiment_id],
                        filter_string=f"attributes.run_id IN ({quoted})", max_results=len(run_ids) + 1)

    # --- One MLflow run per configuration, whichever engine (DVC, Snakemake) or machine ran it -----
    # A run is tagged with a key derived from everything that determines its outputs: the resolved
    # config, the prepared data's manifest, gbml's source code, torch's version and the device type.
    # When a step is asked to run again with the same key (the other engine, or `dvc repro` after
    # the lock file was lost) it restores its outputs from that run's artifacts instead of training
    # again under a new run; GBML_REUSE_RUNS=0 turns this off.
    def finished_run(self, key: str) -> str | None:
        """The newest FINISHED run tagged with ``key``, if any."""
        runs = self.client.search_runs([self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                       filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'")
        return runs[0].info.run_id if runs else None

    def reuse(self, key: str, dst: Path, names: Iterable[str] | None = None, exclude: tuple[str, ...] = ()) -> str | None:
        """Restore ``dst`` from the finished run tagged ``key`` (see ``restore_dir``); that run's id,
        or None when reuse is off, there is no such run or its artifacts are incomplete."""
        run_id = self.finished_run(key) if reuse_enabled() else None
        return run_id if run_id and self.restore_dir(run_id, names, dst, exclude) else None

    def delete_other_runs(self, key: str, keep: str) -> None:
        """Mark deleted every other run with ``key`` (earlier failed or superseded attempts), so the
        store shows one run per configuration (``mlflow gc`` purges deleted runs)."""
        for run in self.client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'"):
            if run.info.run_id != keep:
                self.client.delete_run(run.info.run_id)

    def log_dir(self, run_id: str, path: Path, exclude: tuple[str, ...] = ()) -> None:
        """Log the directory's contents as the run's top-level artifacts, but ``exclude``."""
        for item in sorted(Path(path).iterdir()):
            if item.name in exclude:
                continue
            if item.is_dir():
                self.client.log_artifacts(run_id, str(item), artifact_path=item.name)
            else:
                self.client.log_artifact(run_id, str(item))

    def restore_dir(self, run_id: str, names: Iterable[str] | None, dst: Path, exclude: tuple[str, ...] = ()) -> bool:
        """Download the run's artifacts ``names`` (files or directories; None: every top-level one
        but ``exclude``) into ``dst``, replacing it atomically; False (``dst`` untouched) when any
        is missing."""
        if names is None:
            names = [a.path for a in self.client.list_artifacts(run_id) if a.path not in exclude]
        try:
            with staged_dir(dst) as tmp:
                for name in names:
                    self.client.download_artifacts(run_id, name, str(tmp))
                # Restored outputs are made now: with the artifacts' old times, Snakemake would
                # find them older than inputs re-made meanwhile and schedule them again.
                for path in (tmp, *tmp.rglob("*")):
                    os.utime(path)
        except Exception as err:  # a missing artifact: MlflowException or OSError by store type
            if is_transient(err):
                raise
            return False
        return True

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def metric_keys(self, run_id: str, prefix: str = "") -> list[str]:
        """The names of the run's metrics that start with ``prefix``, sorted."""
        return sorted(k for k in self.client.get_run(run_id).data.metrics if k.startswith(prefix))



def reuse_enabled() -> bool:
    return os.environ.get("GBML_REUSE_RUNS", "1") != "0"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
