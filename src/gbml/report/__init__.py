"""reports/: tables and figures built from the metrics MLflow holds.

The evaluations of the current grid name their MLflow runs (``evals/<run>/metrics.json`` holds
the run id, nothing is read from it but that pointer); everything shown is fetched from MLflow
with ``mlflow.search_runs`` and the metric history API, so the report shows what was tracked.

(This file imports nothing: training imports ``gbml.report.figures``, which runs it, and should
neither load nor, in dvc.yaml, depend on the report's code. ``gbml.report.build.build_report``
builds the report.)
"""