"""gbml: a reproducibility pipeline for gradient-based meta-learning.

The library is organised one concept per module: ``data`` (fetch, prepare, episodes),
``models``, ``algorithms``, ``train``/``evaluate``, ``stats``, ``tracking`` with
``tracking_store`` (the only modules that talk to MLflow) and ``report``. The CLI (``gbml.cli``)
and the workflow files only call it (README.md, "Architecture", maps every concept to its file).
"""

__version__ = "0.1.0"


def load_model(uri, tracking_uri=None, device="auto", ensemble=False):
    """A trained algorithm, ready to adapt: ``gbml.load_model("models:/gbml-cpu-omniglot-maml-5w1s@best")``
    (see ``gbml.model_registry.load_model``; also ``runs:/<run id>`` or a ``runs/<name>`` directory)."""
    from gbml.model_registry import load_model as load

    return load(uri, tracking_uri=tracking_uri, device=device, ensemble=ensemble)
