"""The MLflow store itself: its address, opening it, and waiting while parallel jobs hold it.

With ``gbml.tracking`` (the runs: layout, logging, reuse), the home of what gbml logs to MLflow.
Kept apart so that the store's plumbing (retries on a busy SQLite file, file locks, the server
probe, ``StoreUnavailable``) reads on its own, below the runs that use it.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# Quieter, faster startup: MLflow otherwise probes the environment on import.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.tracking import MlflowClient  # noqa: E402

from gbml.errors import PipelineError  # noqa: E402

# Parallel jobs (Snakemake, SLURM) share one SQLite store: SQLite lets one writer in at a time and
# makes the others fail with "database is locked" once its short busy wait runs out, and two jobs
# creating a fresh store race on its schema. Such calls are retried with jittered backoff.
TRANSIENT = ("database is locked", "database table is locked", "unique constraint failed", "already exists")
RETRY_SECONDS = float(os.environ.get("GBML_MLFLOW_RETRY_SECONDS", 300))


def is_transient(err: Exception) -> bool:
    return any(text in str(err).lower() for text in TRANSIENT)


def retrying(call, *args, **kwargs):
    """``call(*args, **kwargs)``, retried while the store is busy (up to ``RETRY_SECONDS``)."""
    deadline, delay = time.monotonic() + RETRY_SECONDS, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MLflow wraps SQLAlchemy's OperationalError in its own types
            if not is_transient(err) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


@contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def store_init_lock(uri: str):
    """Hold an exclusive lock beside a SQLite store while a client opens it: the first opening
    creates the schema through Alembic migrations, which fail when two processes run them at once."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    with file_lock(Path(uri[len(prefix):]).with_suffix(".lock")):
        yield


class StoreUnavailable(PipelineError):
    """The MLflow store cannot be reached or opened."""


def unavailable(uri: str, err: Exception) -> StoreUnavailable:
    return StoreUnavailable(
        f"the MLflow store {uri} is unavailable before anything ran ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:300]}). "
        "Start the tracking server or fix mlflow.tracking_uri in params.yaml (GBML_MLFLOW_URI overrides it), "
        "then run the same command again; --no-mlflow runs a stage without tracking, but the report reads MLflow")


def probe(uri: str, timeout: float = 10.0) -> None:
    """Fail within ``timeout`` when a tracking server does not answer, instead of after MLflow's
    own retries (minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as err:
        raise unavailable(uri, err) from err


class RetryingClient:
    """An ``MlflowClient`` whose every call is retried while the shared store is busy."""

    def __init__(self, uri: str):
        probe(uri)
        try:
            with store_init_lock(uri):
                self._client = retrying(MlflowClient, tracking_uri=uri)
                retrying(self._client.search_experiments, max_results=1)   # creates/migrates the store now
        except Exception as err:
            raise unavailable(uri, err) from err

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        return (lambda *a, **k: retrying(attr, *a, **k)) if callable(attr) else attr


def tracking_uri(params: dict, root: Path) -> str:
    """``mlflow.tracking_uri`` from params.yaml (``GBML_MLFLOW_URI`` wins), with a relative
    SQLite path resolved against the repository root so every stage hits the same file."""
    uri = os.environ.get("GBML_MLFLOW_URI") or params.get("mlflow", {}).get("tracking_uri", "sqlite:///mlruns.db")
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_absolute():
        uri = prefix + str((root / uri[len(prefix):]).resolve())
    return uri
