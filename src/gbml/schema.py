"""The JSON Schema of params.yaml: one set of rules for ``gbml`` and for Snakemake's ``validate``.

The algorithm and sine sections are built from their config dataclasses, so a new
hyperparameter needs no second edit. ``gbml schema`` renders it to
``workflow/schemas/params.schema.yaml``, which the Snakefile validates the config against; a
test keeps that file equal to this rendering, so both workflow engines and the CLI enforce the
same rules. Each field's range or choices are declared where the dataclass defines it
(``gbml.fields``); checks across fields (e.g. MAML++'s ``min_meta_lr <= meta_lr``) stay in the
dataclasses' ``__post_init__``, which every engine runs through ``gbml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from gbml.config import (ALGORITHMS, DATA_VIEW_KEY, DATASETS, MODEL_KEY, VARIANT_KEY, ConfigError,
                         SineStudyConfig, algorithm_config, base_algorithm, evaluation_config, grid, grid_datasets)
from gbml.fields import schema_of
from gbml.studies.config import CONFIGS as STUDY_CONFIGS
from gbml.models.conv4 import ACTIVATIONS, INITS, NORMALIZATIONS, PADDINGS

SCHEMA_PATH = "workflow/schemas/params.schema.yaml"
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}
SETTING_PATTERN = f"^({'|'.join(DATASETS)})-[0-9]+w[0-9]+s$"


def obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    """A closed object: only ``properties``; ``required`` defaults to all of them."""
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": list(properties) if required is None else required, **extra}


def dataclass_properties(cls) -> dict[str, dict]:
    """Each field of a config dataclass as a property: its JSON type and the range or choices
    it declares (``gbml.fields``); a test requires every number and string to declare them."""
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (tuple, list):
            props[f.name] = {"type": "array"}
        else:
            props[f.name] = {"type": JSON_TYPES[kind], **(schema_of(f) or {})}
    return props


def per_dataset(value: dict) -> dict:
    """``value``, or a mapping from datasets to such values."""
    return {"oneOf": [value, obj({d: value for d in DATASETS}, required=[])]}


def cells() -> dict:
    ints = {"type": "array", "items": {"type": "integer", "minimum": 1}, "uniqueItems": True}
    return obj({"ways": {**ints, "items": {"type": "integer", "minimum": 2}}, "shots": ints})


def model_properties() -> dict:
    return {"hidden": {"type": "integer", "minimum": 1}, "downsample": {"enum": ["stride", "maxpool"]},
            "head": {"enum": ["flatten", "mean"]},
            "init": {"enum": list(INITS)}, "padding": {"enum": list(PADDINGS)}, "bn_scale": {"type": "boolean"},
            "bn_eps": {"type": "number", "exclusiveMinimum": 0}, "activation": {"enum": list(ACTIVATIONS)},
            "normalize": {"enum": list(NORMALIZATIONS)}}


# The reference-network switches (init ... activation) default to Conv4's defaults when a params file leaves them out.
MODEL_REQUIRED = ["hidden", "downsample", "head"]


def algorithm_section(kind: str, variant: bool) -> dict:
    """A section of ``kind``'s hyperparameters; ``settings`` overrides per cell, ``model`` per dataset."""
    fields = dataclass_properties(ALGORITHMS[kind].config)
    overrides = obj(fields, required=[])
    props = {**fields,
             "settings": {"type": ["object", "null"], "propertyNames": {"pattern": SETTING_PATTERN},
                          "additionalProperties": overrides},
             MODEL_KEY: {"type": "object", "propertyNames": {"enum": list(DATASETS)},
                         "additionalProperties": obj(model_properties(), required=[])},
             DATA_VIEW_KEY: obj({"omniglot": obj({
                 "invert": {"type": "boolean"}, "num_val": {"type": "integer", "minimum": 0},
                 "rotate_splits": {"type": "array", "uniqueItems": True, "items": {"enum": ["train", "val", "test"]}}},
                 required=[])}, required=[])}
    if variant:
        props[VARIANT_KEY] = {"const": kind}
    return obj(props, required=[VARIANT_KEY] if variant else [])


def fixed_sections() -> dict[str, dict]:
    string_or_null = {"type": ["string", "null"]}
    positive = {"type": "integer", "minimum": 1}
    return {
        "profile": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "data": obj({
            "omniglot": obj({"mirror": string_or_null, "timeout_s": {"type": "number", "exclusiveMinimum": 0}}),
            "miniimagenet": obj({"source": {"enum": [None, "ilsvrc_tar", "ravi_folder", "pickle_cache"]},
                                 "path": string_or_null,
                                 "sha256": {"type": ["object", "null"], "propertyNames": {"enum": ["train", "val", "test"]},
                                            "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                                 "splits": string_or_null, "timeout_s": {"type": "number", "exclusiveMinimum": 0}}),
        }),
        "prepare": obj({"omniglot": obj({
            "image_size": positive, "resample": {"enum": ["lanczos", "bilinear", "bicubic", "nearest", "box"]},
            "seed": {"type": "integer"}, "num_train": positive, "num_val": {"type": "integer", "minimum": 0},
            "rotate_splits": {"type": "array", "items": {"enum": ["train", "val", "test"]}}})}),
        "grid": obj({"algorithms": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True},
                     "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "uniqueItems": True},
                     **{d: cells() for d in DATASETS}}),
        "training": obj({"device": {"type": "string", "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$"},
                         "autocast": {"enum": ["none", "bf16", "fp16"]},
                         "threads": {"type": "integer", "minimum": 0}, "log_every": positive,
                         "checkpoint_every": {"type": "integer", "minimum": 0},
                         "nonfinite": {"enum": ["stop", "skip"]},
                         "curve_every": positive, "curve_tasks": positive, "curve_seed": {"type": "integer"}}),
        "model": obj({d: obj(model_properties(), required=MODEL_REQUIRED) for d in DATASETS}),
        "evaluate": obj({"split": {"enum": ["train", "val", "test"]}, "num_tasks": positive,
                         "num_tasks_per_algorithm": {"type": ["object", "null"],
                                                     "additionalProperties": per_dataset(positive)},
                         "queries_per_algorithm": {"type": ["object", "null"], "additionalProperties": per_dataset(
                             {"type": "integer", "minimum": 0})},
                         "queries": positive, "seed": {"type": "integer"},
                         "modes": {"type": "array", "minItems": 1, "uniqueItems": True,
                                   "items": {"enum": ["transductive", "non_transductive", "nil"]}}},
                        required=["split", "num_tasks", "queries", "seed", "modes"]),
        "mlflow": obj({"tracking_uri": {"type": "string"}, "artifact_root": {"type": "string"},
                       "experiment": {"type": "string"}}),
        "report": obj({"published": {"type": "string"}}),
        "sine": obj(dataclass_properties(SineStudyConfig), required=[]),
        "studies": obj({name: obj(dataclass_properties(cls), required=[]) for name, cls in STUDY_CONFIGS.items()},
                       required=[]),
        "resources": resources_section(),
    }


def resources_section() -> dict:
    """What Snakemake asks its scheduler for per job (DVC runs one job at a time and ignores it)."""
    job = obj({"mem_mb": {"type": "integer", "minimum": 1}, "runtime": {"type": "integer", "minimum": 1},
               "gpus": {"type": "integer", "minimum": 0}}, required=["mem_mb", "runtime"])
    return obj({"default": job, "train": job, "evaluate": job,
                "slurm": obj({"partition": {"type": ["string", "null"]}, "account": {"type": ["string", "null"]}})})


def params_schema() -> dict[str, Any]:
    sections = fixed_sections()
    kinds = list(ALGORITHMS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gbml params.yaml",
        "description": "Generated by `gbml schema` from src/gbml/schema.py; do not edit by hand.",
        "type": "object",
        # studies: optional (absent, every study takes its defaults; gbml's other commands never read it).
        "required": [name for name in sections if name != "studies"],
        "properties": {**sections, **{k: algorithm_section(k, variant=False) for k in kinds}},
        # Any other top-level key is a grid variant: ``variant_of: <algorithm>`` and that
        # algorithm's keys (e.g. the paper profile's maml_msl).
        "additionalProperties": {"oneOf": [algorithm_section(k, variant=True) for k in kinds]},
    }


def render() -> str:
    return yaml.safe_dump(params_schema(), sort_keys=False, width=100)


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
    from gbml.data.miniimagenet import REFERENCE, configured_source, split_shapes as miniimagenet_shapes

    splits = params["data"]["miniimagenet"].get("splits")
    return miniimagenet_shapes(configured_source(params)[0], Path(splits) if splits else REFERENCE)
