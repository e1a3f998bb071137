"""A summary step -- the sine study, a study gathering its measured units -- recorded as one MLflow
run: computed and logged, or, when a finished run has the same key (settings, measurements, code),
reused with its artifacts restored (see ``Tracker.reuse`` for why MLflow is asked at all)."""

from __future__ import annotations

from pathlib import Path


def recorded(tracker, key: str, out: Path, outputs, name: str, tags: dict, logged: dict, compute, metric_rows):
    """Run ``compute()``, which writes ``outputs`` into ``out``, as one MLflow run keyed by ``key``
    (``tags`` hold it) -- or reuse the finished run with that key, its artifacts restored into ``out``. Returns the
    reused run's id (or None) and ``compute``'s metrics (None when reused)."""
    if tracker and (reused := tracker.reuse(key, out, names=outputs)):
        return reused, None
    run_id = tracker.start_run(name, tags, logged) if tracker else None
    try:
        metrics = compute()
    except BaseException:
        if tracker:
            tracker.finish(run_id, status="FAILED")
        raise
    if tracker:
        tracker.log_metrics(run_id, metric_rows(metrics))
        for output in outputs:
            if (out / output).is_file():
                tracker.log_artifact(run_id, out / output)
        tracker.finish(run_id)
        tracker.delete_other_runs(key, keep=run_id)
    return None, metrics
