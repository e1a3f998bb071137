"""What every seeded study (gradient combinations, minibatch overlap, the Taylor terms, the MAML++
ablation) does the same way with its units, the measurements one ``gbml study`` call makes: a unit
is one combination of the study's axes (e.g. arm x seed), measured into a directory of its own;
with no seeds in the profile the study is not run and its summary is ``metrics.json`` alone."""

from __future__ import annotations

import itertools
from typing import Callable, Iterable


def grid_units(**axes: Iterable) -> list[dict]:
    """Every combination of the axes' values as ``{axis: value}``, the first axis outermost."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def unit_names_from(units: Callable, unit_dir: Callable) -> Callable[[dict, object], list[str]]:
    """A study's ``unit_names(params, cfg)``: each of its units' directory name, in order."""
    return lambda params, cfg: [unit_dir(**unit) for unit in units(cfg)]


def summary_outputs_from(outputs: tuple[str, ...]) -> Callable[[dict, object], tuple[str, ...]]:
    """A study's ``summary_outputs(params, cfg)``: everything it writes, or, with no seeds in this
    profile, ``metrics.json`` alone (saying that it was not run)."""
    return lambda params, cfg: outputs if cfg.seeds else ("metrics.json",)
