"""gbml: a reproducibility pipeline for gradient-based meta-learning.

The library is organised one concept per module: ``data`` (fetch, prepare, episodes),
``models``, ``algorithms``, ``train``/``evaluate``, ``stats``, ``tracking`` (the only module
that talks to MLflow) and ``report``. The CLI (``gbml.cli``) and the workflow files only call it.
"""

__version__ = "0.1.0"
