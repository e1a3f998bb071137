"""ANIL, "almost no inner loop" (Raghu, Raghu, Bengio, Vinyals 2020, section 4).

MAML with the inner loop restricted to the network's head: the body's features are learned by
the outer loop only, and each task adapts just the final linear layer. Everything else --
second/first order, minibatching, the outer Adam -- is MAML's, so ANIL is a subclass that
changes which parameters the inner loop adapts.
"""

from __future__ import annotations

from dataclasses import dataclass

from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.errors import ConfigError
from gbml.fields import text


@dataclass(frozen=True)
class ANILConfig(MAMLConfig):
    head: str = text("classifier")   # module whose parameters the inner loop adapts


class ANIL(MAML):
    cfg: ANILConfig

    def adapted_parameter_names(self) -> list[str]:
        names = [n for n in self.params if n.startswith(self.cfg.head + ".")]
        if not names:
            raise ConfigError(f"anil.head: the model has no parameters under {self.cfg.head!r}; "
                             f"its parameters are {', '.join(self.params)}")
        return names
