"""Each study's module, by name (the ``gbml study`` command's table), and where a study finds
the pipeline's products."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from gbml.studies import feature_reuse, gradient_combinations, mamlpp_ablation, minibatch_overlap, taylor_terms

STUDIES = {"feature_reuse": feature_reuse, "gradient_combinations": gradient_combinations,
           "minibatch_overlap": minibatch_overlap, "taylor_terms": taylor_terms, "mamlpp_ablation": mamlpp_ablation}


@dataclass(frozen=True)
class Workspace:
    """``data/prepared/<dataset>`` and ``runs/`` of the repository a study reads."""
    data: Path
    runs: Path

    def prepared(self, dataset: str) -> Path:
        return self.data / "prepared" / dataset


def measurements_fingerprint(measured: Path, names: list[str]) -> str:
    """sha256 over the files ``names`` (paths under ``measured``) a study's summary reads, an absent
    file counting as absent: the summary's MLflow run is reused only for the same measurements."""
    digest = hashlib.sha256()
    for name in names:
        path = Path(measured) / name
        digest.update(f"{name}\0".encode() + (path.read_bytes() if path.is_file() else b"\0absent"))
    return digest.hexdigest()
