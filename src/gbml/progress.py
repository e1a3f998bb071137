"""Progress of long work (fetch, prepare, train, evaluate, the studies) that reads well wherever it
goes: a live tqdm bar on a terminal, and whole lines every ``GBML_PROGRESS_SECONDS`` (30 by default)
when stderr is a file, a pipe, a DVC or Snakemake log or a SLURM job's output.

tqdm redraws its bar with carriage returns; written to a file, each redraw is a fragment of one
ever-growing line (a SLURM log of a day's training becomes megabytes on a single line). Off a
terminal the same bar is therefore printed as a plain line per update, at most every
``GBML_PROGRESS_SECONDS``, plus the final count.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TextIO

from tqdm.auto import tqdm

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed} elapsed, {remaining} left, {rate_fmt}]"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed} elapsed, {rate_fmt}]"


def on_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # replaced or closed streams
        return False


def line_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("GBML_PROGRESS_SECONDS", 30)))
    except ValueError:
        return 30.0


class Lines:
    """A file for tqdm that turns each redraw (``\\r`` + text) into one line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:   # tqdm also writes bare "\r" and "\n"; they would be empty lines
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             disable: bool = False, **kwargs) -> tqdm:
    """``tqdm(iterable, ...)`` on a terminal; periodic whole lines elsewhere (see the module)."""
    stream = sys.stderr
    if disable or on_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, **kwargs)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    kwargs.pop("mininterval", None)
    kwargs.pop("dynamic_ncols", None)
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=Lines(stream), ascii=True,
                mininterval=line_seconds(), miniters=1, dynamic_ncols=False, ncols=None,
                bar_format=LINE_FORMAT if total else LINE_FORMAT_NO_TOTAL, **kwargs)
