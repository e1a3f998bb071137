"""Every algorithm by the name its params.yaml section and grid entry use: its config dataclass,
its class, and the settings the name itself fixes. The one table the config loader, the schema,
the factory and the evaluation read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gbml.algorithms.anil import ANIL, ANILConfig
from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.algorithms.mamlpp import MAMLPlusPlus, MAMLPlusPlusConfig
from gbml.algorithms.pretrain import Pretrain, PretrainConfig
from gbml.algorithms.reptile import Reptile, ReptileConfig


@dataclass(frozen=True)
class Registered:
    config: type        # the params section's dataclass (its fields declare the schema's bounds)
    algorithm: type     # a MetaLearner subclass, built by gbml.factory
    forced: dict[str, Any] = field(default_factory=dict)   # settings the name defines


# "fomaml" is MAML with ``first_order`` forced on: its own section and grid entry, so a grid can
# hold both and the report can set it beside the papers' first-order rows.
ALGORITHMS: dict[str, Registered] = {
    "maml": Registered(MAMLConfig, MAML),
    "fomaml": Registered(MAMLConfig, MAML, {"first_order": True}),
    "anil": Registered(ANILConfig, ANIL),
    "reptile": Registered(ReptileConfig, Reptile),
    "mamlpp": Registered(MAMLPlusPlusConfig, MAMLPlusPlus),
    "pretrain": Registered(PretrainConfig, Pretrain),
}
