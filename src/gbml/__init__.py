"""gbml: a reproducibility pipeline for gradient-based meta-learning.

The library is organised one concept per module: ``data`` (fetch, prepare, episodes),
``models``, ``algorithms``, ``train``/``evaluate``, ``stats``, ``tracking`` with
``tracking_store`` (MLflow runs and the store), ``model_registry`` and ``system_metrics`` (the only
modules that import MLflow) and ``report``. The CLI (``gbml.cli``)
and the workflow files only call it (README.md, "Architecture", maps every concept to its file).
"""

__version__ = "0.1.0"

