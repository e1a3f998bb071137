"""Each study's module, by name (the ``gbml study`` command's table), and where a study finds
the pipeline's products."""

from __future__ import annotations

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
