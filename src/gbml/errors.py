"""The errors gbml reports to a user as a message, not a traceback.

Each says what is wrong with the user's input or environment (params.yaml, the data, the
tracking store, a checkpoint) and what to do. The CLI prints these in one line and exits 2; any
other exception is a bug in gbml and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fix:
    """The pipeline step whose run fixes an error. The library names the step; the CLI says how to
    run it (the DVC stage and the ``gbml`` command, ``gbml.cli.how_to_run``), so the library holds
    no DVC stage name."""

    step: str           # fetch, prepare, train, evaluate, sine, study
    unit: Any = None    # train/evaluate: the RunSpec (None: any run); fetch/prepare: the dataset; study: its name
    force: bool = False  # the step's outputs look up to date to DVC, but are not: re-run it anyway


class GbmlError(Exception):
    """A problem outside gbml's code that the message explains; ``fix``, when given, the step to run."""

    def __init__(self, *args, fix: Fix | None = None):
        super().__init__(*args)
        self.fix = fix


class ConfigError(GbmlError, ValueError):
    """A params.yaml problem; the message names the key, the value and what is allowed."""


class PipelineError(GbmlError, RuntimeError):
    """A stage that cannot go on for a reason outside the code (the tracking store, a checkpoint,
    the order of stages); the message says what was kept and what to do."""


class DataError(GbmlError, ValueError):
    """A raw or prepared dataset that cannot be used as it is; the message says how to remake it."""
