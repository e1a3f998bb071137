"""The errors gbml reports to a user as a message, not a traceback.

Each says what is wrong with the user's input or environment (params.yaml, the data, the
tracking store, a checkpoint) and what to do. The CLI prints these in one line and exits 2; any
other exception is a bug in gbml and keeps its traceback.
"""

from __future__ import annotations


class GbmlError(Exception):
    """A problem outside gbml's code that the message explains."""


class ConfigError(GbmlError, ValueError):
    """A params.yaml problem; the message names the key, the value and what is allowed."""


class PipelineError(GbmlError, RuntimeError):
    """A stage that cannot go on for a reason outside the code (the tracking store, a checkpoint,
    the order of stages); the message says what was kept and what to do."""


class DataError(GbmlError, ValueError):
    """A raw or prepared dataset that cannot be used as it is; the message says how to remake it."""
