"""reports/: tables and figures built from the metrics MLflow holds.

The evaluations of the current grid name their MLflow runs (``evals/<run>/metrics.json`` holds
the run id, nothing is read from it but that pointer); everything shown is fetched from MLflow
with ``mlflow.search_runs`` and the metric history API, so the report shows what was tracked.
"""

from __future__ import annotations

from gbml.report.build import build_report

__all__ = ["build_report"]
