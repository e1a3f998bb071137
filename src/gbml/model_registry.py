"""Registered checkpoints: each finished training run's final checkpoint in the MLflow Model
Registry, and ``load_model``, the one call that turns a registered checkpoint (or a run
directory) back into a ready-to-adapt gbml algorithm::

    from gbml.model_registry import load_model
    algorithm = load_model("models:/gbml-cpu-omniglot-maml-5w1s@best")
    adapted = algorithm.adapt(support_x[None], support_y[None], None)   # a stack of one task
    logits = algorithm.predict(adapted, query_x[None])[0]

One registered model per profile, dataset, algorithm and setting (``model_name``), one version per
training run -- a seed, or a configuration trained again -- tagged with its seed, run name and
final held-out accuracy. Aliases: ``seed<k>``, the newest version of seed k; ``best``, the version
with the highest final held-out accuracy (on the run's curve split: validation, or test where the
protocol has no validation classes -- Reptile's; the tag ``curve_split`` says which). A version's
source is its run's artifacts: ``config.json``, ``run.json``, ``checkpoint.pt`` (and MAML++'s
``ensemble/``). A version whose run was deleted (trained again with ``GBML_REUSE_RUNS=0``) is
deleted with it at the next registration.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from gbml.config import RunSpec
from gbml.tracking_store import file_lock

BEST = "best"


def model_name(profile: str, spec: RunSpec) -> str:
    return f"gbml-{profile}-{spec.dataset}-{spec.algorithm}-{spec.ways}w{spec.shots}s"


def register(tracker, run_id: str, cfg: dict, summary: dict) -> str:
    """Register the finished run's checkpoint (once: again is a no-op) and move the aliases;
    returns its version."""
    spec = RunSpec(**summary["run"])
    name, client = model_name(cfg["profile"], spec), tracker.client
    held_out = summary.get("final_val_acc", math.nan)
    with file_lock(tracker.artifact_root / ".registry.lock"):   # parallel seeds: one alias update at a time
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description=(
                f"{spec.algorithm} on {spec.dataset}, {spec.ways}-way {spec.shots}-shot, profile {cfg['profile']}: "
                f"one version per training run. Load one with gbml.model_registry.load_model('models:/{name}@{BEST}')."))
        versions = live_versions(client, name)
        mine = next((v for v in versions if v.run_id == run_id), None)
        if mine is None:
            mine = client.create_model_version(
                name, client.get_run(run_id).info.artifact_uri, run_id=run_id,
                tags={"seed": str(spec.seed), "run_name": spec.name, "held_out_acc": str(held_out),
                      "curve_split": summary.get("curve_split", "val")},
                description=f"{spec.name}: final checkpoint of MLflow run {run_id}")
            versions.append(mine)
        client.set_registered_model_alias(name, f"seed{spec.seed}", mine.version)
        scored = [v for v in versions if not math.isnan(float(v.tags.get("held_out_acc", "nan")))]
        if scored:   # ties: the older version keeps the alias
            best = max(scored, key=lambda v: (float(v.tags["held_out_acc"]), -int(v.version)))
            client.set_registered_model_alias(name, BEST, best.version)
    return mine.version


def live_versions(client, name: str) -> list:
    """The model's versions whose run still exists undeleted; the others (their run trained again
    with GBML_REUSE_RUNS=0, or purged by `mlflow gc`) are deleted from the registry here."""
    live = []
    for version in client.search_model_versions(f"name = '{name}'"):
        try:
            deleted = client.get_run(version.run_id).info.lifecycle_stage == "deleted"
        except Exception:   # purged
            deleted = True
        if deleted:
            client.delete_model_version(name, version.version)
        else:
            live.append(version)
    return live


def load_model(uri: str | Path, tracking_uri: str | None = None, device: str = "auto", ensemble: bool = False):
    """A trained gbml algorithm, ready to ``adapt`` and ``predict``, from ``models:/<name>@<alias>``,
    ``models:/<name>/<version>``, ``runs:/<run id>`` or a run directory (``runs/<name>``).

    ``tracking_uri``: the MLflow store (default: ``GBML_MLFLOW_URI``, ``MLFLOW_TRACKING_URI``, or
    ``sqlite:///mlruns.db`` in the current directory -- the pipeline's store when run from the
    repository root). ``device``: "auto" (CUDA when present), "cpu", "cuda", ... ``ensemble``: for
    a run that kept a checkpoint ensemble (MAML++), the list of its members as evaluation scores
    them, instead of the final checkpoint."""
    if Path(uri).is_dir():
        return load_run_dir(Path(uri), device, ensemble)
    import mlflow

    store = (tracking_uri or os.environ.get("GBML_MLFLOW_URI") or os.environ.get("MLFLOW_TRACKING_URI")
             or "sqlite:///mlruns.db")
    uri = str(uri)
    if uri.startswith("models:/"):   # resolved here: MLflow would ask its global registry, not ``store``
        uri = version_of(mlflow.MlflowClient(tracking_uri=store, registry_uri=store), uri).source
    with tempfile.TemporaryDirectory(prefix="gbml-model-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=store)
        return load_run_dir(Path(path), device, ensemble)


def version_of(client, uri: str):
    """The model version ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names."""
    ref = uri[len("models:/"):].strip("/")
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = ref.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return client.get_model_version(name, version)


def load_run_dir(run_dir: Path, device: str = "auto", ensemble: bool = False):
    from gbml.factory import build_algorithm, resolve_device
    from gbml.io import load_checkpoint
    from gbml.trained_runs import load_members

    cfg = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "run.json").read_text())
    spec, torch_device = RunSpec(**cfg["run"]), resolve_device(device)
    if not summary.get("image_shape"):
        raise ValueError(f"{run_dir / 'run.json'} does not record the image shape (trained before gbml "
                         "registered checkpoints); load it with gbml.trained_runs.load_members")
    shape = tuple(summary["image_shape"])
    if ensemble:
        return load_members(spec, cfg, run_dir, shape, torch_device)[0]
    algorithm = build_algorithm(spec, cfg, shape, torch_device)
    algorithm.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt"))
    algorithm.model.eval()   # as evaluation scores it: batch-norm running statistics untouched
    return algorithm
