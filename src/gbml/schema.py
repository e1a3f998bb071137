"""The JSON Schema of params.yaml: one set of rules for ``gbml`` and for Snakemake's ``validate``.

The algorithm and sine sections are built from their config dataclasses, so a new
hyperparameter needs no second edit. ``gbml schema`` renders it to
``workflow/schemas/params.schema.yaml``, which the Snakefile validates the config against; a
test keeps that file equal to this rendering, so both workflow engines and the CLI enforce the
same rules. Each field's range or choices are declared where the dataclass defines it
(``gbml.fields``); checks across fields (e.g. MAML++'s ``min_meta_lr <= meta_lr``) stay in the
dataclasses' ``__post_init__``, which every engine runs through ``gbml``. ``gbml.validation``
checks a params file against this schema and reports its problems.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from gbml.config import ALGORITHMS, DATA_VIEW_KEY, DATASETS, MODEL_KEY, VARIANT_KEY
from gbml.fields import schema_of
from gbml.sine_config import SineStudyConfig
from gbml.studies.config import CONFIGS as STUDY_CONFIGS
from gbml.models.reference import ACTIVATIONS, INITS, NORMALIZATIONS, PADDINGS

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


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by several fields (an inherited field's enum) in full each time:
    no YAML anchors in a file people read."""
    def ignore_aliases(self, data) -> bool:
        return True


def render() -> str:
    return yaml.dump(params_schema(), Dumper=_PlainDumper, sort_keys=False, width=100)

