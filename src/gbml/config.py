"""params.yaml: loading, the run grid, and each run's resolved configuration.

``params.yaml`` is the one source of truth that DVC, Snakemake and the CLI read. It holds one
*profile* (the committed one is the CPU default; ``profiles/`` holds the others). Each algorithm
has a section of base hyperparameters plus optional ``settings`` overrides keyed by
``"<dataset>-<ways>w<shots>s"``, so the paper profile can give each table cell its published
values while DVC still tracks one section per algorithm.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gbml.algorithms.registry import ALGORITHMS  # noqa: F401 -- re-exported: the algorithms' names
from gbml.errors import ConfigError, PipelineError  # noqa: F401 -- re-exported: callers import them from here

# A params section with ``variant_of: <algorithm>`` is a grid entry of its own: that algorithm
# with the section's (complete) settings, e.g. MAML++'s single-switch ablations. Complete rather
# than merged with the base section so that DVC's per-section params tracking stays exact.
VARIANT_KEY = "variant_of"
# An algorithm section's ``model: {<dataset>: {...}}`` overrides ``model.<dataset>`` for that
# algorithm's runs (MAML++ used 48 filters on Mini-ImageNet where MAML and Reptile used 32); kept
# in the algorithm's section so DVC re-runs only that algorithm when it changes.
MODEL_KEY = "model"
# An algorithm section's ``data_view: {omniglot: {...}}`` reads the prepared Omniglot arrays the
# way that algorithm's reference code read Omniglot (inverted pixels, its train / validation cut,
# its rotated splits; gbml.data.prepared.load_split), so one prepared dataset serves every
# algorithm's protocol. Absent, a run reads the data as prepared (and its config omits the key).
DATA_VIEW_KEY = "data_view"
DATASETS = ("omniglot", "miniimagenet")


@dataclass(frozen=True, order=True)
class RunSpec:
    """One cell of the grid: algorithm x dataset x ways x shots x seed."""

    algorithm: str
    dataset: str
    ways: int
    shots: int
    seed: int

    @property
    def setting(self) -> str:
        return f"{self.dataset}-{self.ways}w{self.shots}s"

    @property
    def name(self) -> str:
        """Directory and run name, e.g. ``maml-omniglot-5w1s-seed0``."""
        return f"{self.algorithm}-{self.setting}-seed{self.seed}"


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the repository root, or pass --params)")
    try:
        params = yaml.safe_load(path.read_bytes())   # bytes: a bad encoding is a YAML error with a position
    except yaml.YAMLError as err:   # one line: file, line and column, what is wrong
        mark, context, opened = (getattr(err, k, None) for k in ("problem_mark", "context", "context_mark"))
        where = (f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else
                 f"{path}: byte {err.position}" if hasattr(err, "position") else str(path))   # not UTF-8
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if context and opened:   # e.g. an unclosed '[': say where it was opened
            problem += f" ({context} that starts at line {opened.line + 1}, column {opened.column + 1})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict, *keys: str) -> Any:
    node = params
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"params.yaml: missing key {'.'.join(keys[: i + 1])!r}")
        node = node[key]
    return node


def base_algorithm(params: dict, name: str) -> str:
    """The algorithm a grid name runs: the name itself, or its section's ``variant_of``."""
    if name in ALGORITHMS:
        return name
    node = params.get(name)
    base = node.get(VARIANT_KEY) if isinstance(node, dict) else None
    if base not in ALGORITHMS:
        raise ConfigError(f"params.yaml: {name!r} (grid.algorithms / --algorithm) is neither an algorithm ({', '.join(ALGORITHMS)}) nor a "
                          f"section with '{VARIANT_KEY}: <algorithm>'")
    return base


def grid(params: dict) -> list[RunSpec]:
    """Every run of the profile's grid, in a stable order: algorithms x seeds x, per dataset, its
    own ways x shots (``grid.<dataset>``; the papers' Omniglot and Mini-ImageNet tables have
    different cells, and an empty list leaves a dataset out)."""
    g = section(params, "grid")
    unknown = sorted(set(g) - {"algorithms", "seeds", *DATASETS})
    if unknown:
        raise ConfigError(f"params.yaml: grid has unknown keys {unknown}; allowed: algorithms, seeds and one "
                          f"{{ways: [...], shots: [...]}} per dataset ({', '.join(DATASETS)})")
    for name in section(params, "grid", "algorithms"):
        base_algorithm(params, name)
    cells = [(d, w, s) for d in DATASETS for w, s in itertools.product(*dataset_cells(params, d))]
    return [RunSpec(a, d, int(w), int(s), int(seed)) for a, (d, w, s), seed in itertools.product(
        g["algorithms"], cells, section(params, "grid", "seeds"))]


def dataset_cells(params: dict, dataset: str) -> tuple[list[int], list[int]]:
    """``grid.<dataset>``'s ways and shots lists (what dvc.yaml's per-dataset matrix reads)."""
    node = section(params, "grid", dataset)
    if not isinstance(node, dict) or set(node) != {"ways", "shots"} or not all(
            isinstance(node[k], list) for k in ("ways", "shots")):
        raise ConfigError(f"params.yaml: grid.{dataset} must be {{ways: [...], shots: [...]}} (empty lists leave "
                          f"{dataset} out), got {node!r}")
    return node["ways"], node["shots"]


def grid_datasets(params: dict) -> list[str]:
    """The datasets the grid runs (those with at least one ways x shots cell)."""
    return [d for d in DATASETS if all(dataset_cells(params, d))]


def algorithm_config(params: dict, spec: RunSpec):
    """The algorithm's dataclass config for one run: base section + the setting's overrides."""
    kind = base_algorithm(params, spec.algorithm)
    base = dict(section(params, spec.algorithm))
    base.pop(VARIANT_KEY, None)
    base.pop(MODEL_KEY, None)
    base.pop(DATA_VIEW_KEY, None)
    overrides = (base.pop("settings", None) or {}).get(spec.setting, {})
    merged = {**base, **overrides}
    for key, value in ALGORITHMS[kind].forced.items():
        if merged.setdefault(key, value) != value:
            raise ConfigError(f"params.yaml: {spec.algorithm}.{key} must be {value} (it defines the variant), "
                              f"got {merged[key]!r}")
    cls = ALGORITHMS[kind].config
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise ConfigError(f"params.yaml: {spec.algorithm} has unknown keys {unknown}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    try:
        return cls(**merged)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"params.yaml: {spec.algorithm} ({spec.setting}): {err}") from err


def home_root(root: Path) -> Path:
    """The repository that paths to the world outside it are relative to: ``root``, except in a
    queued DVC experiment's temporary copy (``<repo>/.dvc/tmp/exps/<tmp>/``; DVC sets ``DVC_ROOT``
    to ``<repo>`` there). The MLflow store, its artifacts and relative data sources (a mirror beside
    the repository) are the user's repository's, not the throwaway copy's."""
    root = Path(root).resolve()
    parent = os.environ.get("DVC_ROOT")
    if parent and root != Path(parent).resolve() and root.is_relative_to(Path(parent).resolve() / ".dvc" / "tmp"):
        return Path(parent).resolve()
    return root


def sweep_definition(params: dict, dataset: str) -> dict[str, Any]:
    """What makes one sweep of ``dataset``: the profile and its grid there (MLflow's parent run)."""
    ways, shots = dataset_cells(params, dataset)
    return {"profile": params.get("profile", "unnamed"), "dataset": dataset,
            "algorithms": list(section(params, "grid", "algorithms")), "seeds": list(section(params, "grid", "seeds")),
            "ways": list(ways), "shots": list(shots)}


def resolved_run_config(params: dict, spec: RunSpec) -> dict[str, Any]:
    """Everything that determines one run, as plain JSON-able data (written next to the run)."""
    return {
        "profile": params.get("profile", "unnamed"),
        "run": dataclasses.asdict(spec),
        "base_algorithm": base_algorithm(params, spec.algorithm),
        "algorithm": dataclasses.asdict(algorithm_config(params, spec)),
        "model": model_config(params, spec),
        "training": section(params, "training"),
        "evaluate": evaluation_config(params, spec.algorithm, spec.shots, spec.dataset),
        # Mini-ImageNet has no prepare settings (84x84, the Ravi split): its source is the record.
        "prepare": params.get("prepare", {}).get(spec.dataset) or params.get("data", {}).get(spec.dataset, {}),
        **({DATA_VIEW_KEY: view} if (view := data_view(params, spec)) else {}),
    }


def data_view(params: dict, spec: RunSpec) -> dict[str, Any]:
    """The algorithm section's ``data_view`` for the run's dataset ({} when it has none)."""
    return dict((section(params, spec.algorithm).get(DATA_VIEW_KEY) or {}).get(spec.dataset) or {})


def model_config(params: dict, spec: RunSpec) -> dict[str, Any]:
    """``model.<dataset>`` with the algorithm section's overrides for that dataset."""
    model = dict(section(params, "model", spec.dataset))
    overrides = (section(params, spec.algorithm).get(MODEL_KEY) or {}).get(spec.dataset) or {}
    unknown = sorted(set(overrides) - set(model))
    if unknown:
        raise ConfigError(f"params.yaml: {spec.algorithm}.{MODEL_KEY}.{spec.dataset} has unknown keys {unknown}; "
                          f"allowed: the keys of model.{spec.dataset} ({', '.join(sorted(model))})")
    return {**model, **overrides}


def evaluation_config(params: dict, algorithm: str, shots: int | None = None,
                      dataset: str | None = None) -> dict[str, Any]:
    """The ``evaluate`` section for one grid entry. The papers' protocols differ, so
    ``num_tasks_per_algorithm`` (Reptile scored 10,000 tasks, MAML 600) overrides ``num_tasks``
    and ``queries_per_algorithm`` overrides ``queries`` (0: the cell's ``shots``, Finn et al.'s K
    queries per class), by the entry's name or else by its base algorithm (so a Reptile variant
    scores like Reptile). A value may be per dataset, ``{omniglot: 1, miniimagenet: 15}``
    (MAML++'s targets); a dataset it leaves out takes the next rule."""
    ev = dict(section(params, "evaluate"))
    for key, plain in (("num_tasks_per_algorithm", "num_tasks"), ("queries_per_algorithm", "queries")):
        per_algorithm = ev.pop(key, None) or {}
        for name in per_algorithm:
            base_algorithm(params, name)     # a typo is an error, not a silently ignored key
        rules = [per_algorithm.get(algorithm), per_algorithm.get(base_algorithm(params, algorithm))]
        for rule in rules:
            if isinstance(rule, dict):
                if dataset is None:
                    raise ValueError(f"evaluate.{key}.{algorithm} is per dataset: pass dataset")
                rule = rule.get(dataset)
            if rule is not None:
                ev[plain] = int(rule)
                break
    if ev["queries"] == 0:
        if shots is None:
            raise ValueError("evaluate.queries_per_algorithm 0 means the cell's shots: pass shots")
        ev["queries"] = shots
    return ev

