"""What is wrong with a params.yaml, in words: every problem on one line, with its key path, the
bad value and what is allowed.

First the JSON Schema (``gbml.schema``), its errors rephrased; then what a schema cannot say:
task sizes against the datasets' classes and examples per class, the studies' own rules, and
one run's ``--ways``/``--shots``. The CLI runs ``validate_params`` before every command and the
Snakefile before any job, so both engines refuse the same files with the same messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any

import jsonschema

from gbml.config import (ALGORITHMS, VARIANT_KEY, ConfigError, algorithm_config, base_algorithm, evaluation_config,
                         grid, grid_datasets)
from gbml.schema import SCHEMA_PATH, algorithm_section, fixed_sections, params_schema


def validate_params(params: dict, source: str = "params.yaml") -> None:
    """Raise ``ConfigError`` listing every problem, each naming the key path, the bad value and
    what is allowed: first the schema, then what a schema cannot say (task sizes against the
    datasets' classes and examples per class)."""
    validator = jsonschema.Draft202012Validator(params_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    problems = non_finite(params) + [line for error in errors for line in describe(error)]
    if not problems:
        problems = task_size_problems(params) + study_problems(params)
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:MAX_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise ConfigError(f"{source}: {len(problems)} problem(s) (schema: {SCHEMA_PATH}):\n{shown}{more}")


MAX_SHOWN = 12


def non_finite(node: Any, path: tuple = ()) -> list[str]:
    """Every NaN or infinite number in params.yaml (YAML's .nan, .inf): a schema's ranges cannot
    catch NaN (it compares false with every bound), and no setting means anything by either."""
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in non_finite(value, (*path, key))]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in non_finite(value, (*path, i))]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{'.'.join(map(str, path))}: {node!r} is not a finite number; allowed: finite numbers"]
    return []


def key_path(error, *more: Any, base: tuple = ()) -> str:
    return ".".join(map(str, [*base, *error.absolute_path, *more])) or "(top level)"


def suggestion(word: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(word, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def describe(error, base: tuple = ()) -> list[str]:
    """One line per problem: the key path (under ``base``), the bad value, what is allowed."""
    where, value, rule = key_path(error, base=base), error.instance, error.schema
    if error.validator == "additionalProperties" and "properties" in rule:
        allowed = sorted(rule["properties"])
        return [f"{key_path(error, k, base=base)}: unknown key; allowed: {', '.join(allowed)}{suggestion(k, allowed)}"
                for k in value if k not in rule["properties"]]
    if error.validator == "oneOf" and len(error.absolute_path) == 1 and not base:
        return describe_section(where, value)
    if error.validator == "enum":
        return [f"{where}: {value!r} is not allowed; allowed: {', '.join(map(repr, rule['enum']))}"]
    if error.validator == "type":
        return [f"{where}: {value!r} is not of type {error.validator_value!r}"]
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[error.validator]
        return [f"{where}: {value!r} is out of range; allowed: {op} {error.validator_value}"]
    if error.validator == "pattern":
        return [f"{where}: {value!r} is not allowed; allowed: strings matching {error.validator_value}"]
    return [f"{where}: {error.message}"]


def describe_section(where: str, value: Any) -> list[str]:
    """A top-level key that is no fixed section or algorithm: a grid variant if it says
    ``variant_of: <algorithm>`` (then checked as that algorithm's section), else unknown."""
    base = value.get(VARIANT_KEY) if isinstance(value, dict) else None
    if base in ALGORITHMS:
        validator = jsonschema.Draft202012Validator(algorithm_section(base, variant=True))
        return [line for error in validator.iter_errors(value) for line in describe(error, base=(where,))]
    allowed = [*fixed_sections(), *ALGORITHMS]
    return [f"{where}: unknown section; allowed: {', '.join(allowed)}, or a grid variant (a section with "
            f"'{VARIANT_KEY}: <{'|'.join(ALGORITHMS)}>'){suggestion(where, allowed)}"]


def task_size_problems(params: dict) -> list[str]:
    """Every grid cell's episodes against the classes and examples per class of the splits they
    are drawn from: meta-training (train), the learning curve (val, or test without one; one
    query per class) and evaluation (``evaluate.split``). Seeds draw the same shapes, so each
    algorithm and setting is checked once."""
    shapes = {dataset: split_shapes(params, dataset) for dataset in grid_datasets(params)}
    cells = {dataclasses.replace(spec, seed=0) for spec in grid(params)}
    problems = [p for spec in sorted(cells) for p in cell_problems(params, spec, shapes[spec.dataset])]
    return list(dict.fromkeys(problems))     # ways problems repeat across algorithms


def study_problems(params: dict) -> list[str]:
    """A study's own rules (``gbml.studies.config``) hold, and one that measures the grid's
    trained runs (its ``algorithms``) measures runs the grid trains."""
    from gbml.studies.config import CONFIGS, study_config

    problems, trained = [], set(params["grid"]["algorithms"])
    for name in [n for n in CONFIGS if n in (params.get("studies") or {})]:
        try:
            cfg = study_config(params, name)
        except ConfigError as err:
            problems.append(str(err))
            continue
        untrained = [a for a in getattr(cfg, "algorithms", ()) if a not in trained]
        if untrained:
            problems.append(f"studies.{name}.algorithms: {untrained} not in grid.algorithms {sorted(trained)} "
                            "(the study measures the grid's trained runs); add them to the grid or drop them here")
    return problems


def run_problems(params: dict, spec) -> list[str]:
    """What a schema cannot say about one run that ``gbml train``/``evaluate`` is asked for (its
    ``--ways``/``--shots`` need not be in the grid): its episodes against the data."""
    if spec.ways < 2 or spec.shots < 1:
        return [f"--ways {spec.ways} --shots {spec.shots}: allowed: at least 2 ways and 1 shot"]
    return cell_problems(params, spec, split_shapes(params, spec.dataset), ("--ways", "--shots"))


def cell_problems(params: dict, spec, shapes: dict[str, tuple[int, int]],
                  sources: tuple[str, str] | None = None) -> list[str]:
    """One cell's episodes against the classes and examples per class of each split they are
    drawn from; ``sources`` name where its ways and shots come from (the grid's lists by default)."""
    ways_key, shots_key = sources or (f"grid.{spec.dataset}.ways", f"grid.{spec.dataset}.shots")
    algo_cfg = algorithm_config(params, spec)
    registered = ALGORITHMS[base_algorithm(params, spec.algorithm)]
    train_shots, train_queries = registered.algorithm.episode_shape(algo_cfg, spec.shots)
    train_keys = [f"{spec.algorithm}.train_shots" if getattr(algo_cfg, "train_shots", 0) else shots_key,
                  *([f"{spec.algorithm}.train_queries"] if train_queries else [])]
    evaluation = evaluation_config(params, spec.algorithm, spec.shots, spec.dataset)
    # (split, shots, queries, what samples it, the keys that set its size)
    uses = [("train", train_shots, train_queries, f"{spec.algorithm}'s meta-training", " plus ".join(train_keys)),
            ("val" if shapes["val"][0] > 0 else "test", spec.shots, 1, "the learning curve",
             f"{shots_key} plus 1 query"),
            (evaluation["split"], spec.shots, evaluation["queries"], "evaluation",
             f"{shots_key} plus evaluate.queries" + (" (queries_per_algorithm)" if evaluation["queries"]
                                                     != params["evaluate"]["queries"] else ""))]
    problems = []
    for split, shots, queries, what, keys in uses:
        classes, examples = shapes[split]
        if spec.ways > classes:
            problems.append(f"{ways_key}: {spec.ways} is more than the {classes} classes of "
                            f"{spec.dataset}'s {split} split, which {what} samples; allowed: at most {classes}")
        if shots + queries > examples:
            problems.append(f"{spec.setting}: {shots} + {queries} = {shots + queries} examples per class for "
                            f"{what} ({keys}), but {spec.dataset}'s {split} split has {examples} per class; "
                            f"allowed: at most {examples} in all")
    return problems


def split_shapes(params: dict, dataset: str) -> dict[str, tuple[int, int]]:
    """(classes, examples per class) of each split of ``dataset`` as params.yaml prepares it."""
    if dataset == "omniglot":
        from gbml.data.omniglot import split_shapes as omniglot_shapes

        return omniglot_shapes(**params["prepare"]["omniglot"])
    from gbml.data.miniimagenet import configured_source
    from gbml.data.miniimagenet_splits import REFERENCE, split_shapes as miniimagenet_shapes

    splits = params["data"]["miniimagenet"].get("splits")
    return miniimagenet_shapes(configured_source(params)[0], Path(splits) if splits else REFERENCE)
