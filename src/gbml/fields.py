"""Hyperparameter fields that declare the values they allow.

A config dataclass (``MAMLConfig``, ``ReptileConfig``, ...) declares each number's range and
each string's choices where it defines the field, e.g. ``inner_lr: float = rate(0.4)``.
``gbml.schema`` reads these declarations into params.yaml's JSON Schema, so every engine (the
CLI, DVC's stages, Snakemake's ``validate``) enforces what the field means -- ``train_shots = 0``
is "the setting's shots" for MAML and Reptile alike -- rather than a rule guessed from its name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jsonschema

SCHEMA = "schema"   # the metadata key holding a field's JSON Schema keywords


def declared(default: Any, **schema: Any) -> Any:
    return dataclasses.field(default=default, metadata={SCHEMA: schema})


def count(default: int, minimum: int = 1) -> Any:
    """An integer of at least ``minimum`` (1; 0 where 0 has a stated meaning)."""
    return declared(default, minimum=minimum)


def integer(default: int) -> Any:
    """Any integer (seeds)."""
    return declared(default)


def rate(default: float) -> Any:
    """A learning rate or step size: positive."""
    return declared(default, exclusiveMinimum=0)


def non_negative(default: float) -> Any:
    """A schedule's end point, which may reach 0."""
    return declared(default, minimum=0)


def fraction(default: float) -> Any:
    """In [0, 1): Adam's decay rates."""
    return declared(default, minimum=0, exclusiveMaximum=1)


def choice(default: str, *others: str) -> Any:
    """One of ``default`` and ``others``."""
    return declared(default, enum=list(dict.fromkeys((default, *others))))


def section_name(default: str) -> Any:
    """The name of a params.yaml section (letters, digits, '_'): it becomes a DVC matrix key and a
    Snakemake wildcard."""
    return declared(default, pattern="^[A-Za-z0-9_]+$")


def text(default: str) -> Any:
    """A free string (e.g. a module name the algorithm looks up)."""
    return declared(default)


def schema_of(field: dataclasses.Field) -> dict | None:
    """The JSON Schema keywords ``field`` declares, or None when it declares none."""
    return field.metadata.get(SCHEMA)


def check(config: Any) -> None:
    """Raise ValueError naming the first field of the dataclass instance ``config`` whose value
    breaks its declaration (a config built in code, not from a validated params.yaml): checked by
    the validator params.yaml's schema uses, plus NaN and infinities, which no bound catches."""
    for field in dataclasses.fields(config):
        value, schema = getattr(config, field.name), schema_of(field)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field.name} must be a finite number, got {value!r}")
        error = next(jsonschema.Draft202012Validator(schema).iter_errors(value), None) if schema else None
        if error:
            raise ValueError(f"{field.name}: {error.message}")


def from_section(cls, values: dict, where: str):
    """``cls`` built from the params section at ``where`` (e.g. ``sine``), refusing keys that are
    not fields (a typo would otherwise silently leave a default in place); a value the fields
    reject is a ``ConfigError`` naming the section."""
    from gbml.errors import ConfigError

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}; allowed: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err
