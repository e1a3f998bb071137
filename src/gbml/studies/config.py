"""What determines each study (``studies.<name>`` in params.yaml): one frozen dataclass per
study, its fields declaring their bounds (``gbml.fields``) so params.yaml's schema enforces them.
Kept apart from the studies' code, which only the study stages run: every command validates
params.yaml, so this module is part of every stage, the studies' code is not."""

from __future__ import annotations

from dataclasses import dataclass

from gbml.errors import ConfigError
from gbml.fields import check, count, from_section, integer

SECTION = "studies"


MAML_FAMILY = ("maml", "fomaml", "anil")   # adapted by MAML's inner loop over named parameters


@dataclass(frozen=True)
class FeatureReuseConfig:
    """The ``studies.feature_reuse`` section of params.yaml."""
    algorithms: tuple[str, ...] = ("maml", "anil")   # trained runs of the grid to analyse
    freeze_algorithms: tuple[str, ...] = ("maml",)   # freezing is moot for ANIL (its body never adapts)
    similarity_tasks: int = count(100)
    queries: int = count(15)        # per class: 5-way x 15 = 75 query examples per similarity
    freeze_tasks: int = count(400)
    freeze_queries: int = count(1)
    seed: int = integer(1234)       # the test tasks (evaluation's seed: the same tasks as evals/)
    modes: tuple[str, ...] = ("transductive", "non_transductive")

    def __post_init__(self):
        check(self)
        for name in ("algorithms", "freeze_algorithms", "modes"):   # YAML lists: keep it hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        outside = sorted(set(self.algorithms) - set(MAML_FAMILY))
        if outside or not self.algorithms:
            raise ValueError(f"algorithms must be a non-empty subset of {list(MAML_FAMILY)} (an inner loop over "
                             f"a layered network's parameters), got {list(self.algorithms)}")
        if not set(self.freeze_algorithms) <= set(self.algorithms):
            raise ValueError(f"freeze_algorithms {list(self.freeze_algorithms)} must be among algorithms")
        if not self.modes or not set(self.modes) <= {"transductive", "non_transductive"}:
            raise ValueError(f"modes must be transductive and/or non_transductive, got {list(self.modes)}")


CONFIGS = {"feature_reuse": FeatureReuseConfig}


def study_config(params: dict, name: str):
    """The study's config from ``studies.<name>`` in params.yaml (absent: the defaults), refusing
    keys that are not fields (a typo would otherwise leave a default in place)."""
    if name not in CONFIGS:
        raise ConfigError(f"no study {name!r}; the studies are {', '.join(CONFIGS)}")
    return from_section(CONFIGS[name], dict((params.get(SECTION) or {}).get(name) or {}), f"{SECTION}.{name}")
