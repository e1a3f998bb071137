"""The one home for writing files and directories atomically, and for loading checkpoints.

Every output gbml writes goes through here, so a killed process, a full disk or an exception
never leaves a half-written file or directory where a reader (DVC, Snakemake, the next stage, a
resumed run) would take it for a whole one:

* a file is written to a uniquely named temporary sibling and renamed over its destination
  (``staged_file``, ``write_atomic``); checkpoints are also ``fsync``-ed (``durable=True``), so even a machine
  crash leaves the previous checkpoint or the new one, never an empty file;
* a directory is built in a uniquely named staging sibling and swapped in with two renames
  (``replace_dir``, ``staged_dir``): the previous tree is moved aside and deleted only once the
  new one is in place. A kill between the two renames leaves the new tree beside the missing
  destination, never a mix of both.

Temporary names carry ``TEMP_MARK``, the writer's pid and a random token: two writers never
share one, and a killed writer's leftovers are recognisable: they are cleared before a staged
tree is published.

Checkpoints load on the CPU (``load_checkpoint``): the algorithms place their tensors on their
own device, and random-generator states must stay CPU tensors whatever device trains (a CPU
``torch.Generator`` refuses any other).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

TEMP_MARK = ".gbml-tmp-"
OLD_MARK = ".gbml-old-"


def temporary_sibling(path: Path, mark: str = TEMP_MARK) -> Path:
    """A fresh name beside ``path``, hidden, unique to this process and call; it keeps the
    suffix (``savefig`` picks the format from it)."""
    return path.with_name(f".{path.name}{mark}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: the entry lives in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_file(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds and
    delete it otherwise, so ``path`` is absent, the old file or the complete new one, even after
    a full disk. ``durable``: ``fsync`` the file and the rename (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        tmp.replace(path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[Path], None], durable: bool = False) -> None:
    """``write(tmp)`` through ``staged_file``: a reader never sees half a file."""
    with staged_file(path, durable) as tmp:
        write(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` atomically and durably: ``path`` is the new checkpoint or the old one.
    Saved through a file object: given a path, torch records the (random) temporary's name in
    the archive, and the same state would give different bytes, so DVC would see a new output."""
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)
    write_atomic(path, save, durable=True)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state on the CPU, tensors only (``weights_only``: no code runs on load).
    Callers' ``load_state_dict`` move what belongs on their device; generator states stay here."""
    return torch.load(path, map_location="cpu", weights_only=True)


def replace_dir(staged: Path, dest: Path) -> None:
    """Move the complete directory ``staged`` onto ``dest``. A previous ``dest`` is renamed aside
    first and deleted only once the new tree is in place (put back if the move fails); a killed
    writer's temporaries inside ``staged`` are removed first, so they are never published."""
    staged, dest = Path(staged), Path(dest)
    remove_leftovers(staged)
    old = temporary_sibling(dest, OLD_MARK)
    if dest.exists():
        dest.rename(old)
    try:
        staged.rename(dest)
    except OSError:
        if old.exists():
            old.rename(dest)
        raise
    fsync_dir(dest.parent)
    remove_siblings(dest, OLD_MARK)   # this swap's old tree, and any a killed swap left


@contextmanager
def scratch_dir(dest: Path) -> Iterator[Path]:
    """Yield a new empty directory beside ``dest`` (a temporary sibling), deleted at the end of
    the block; a killed writer's are deleted when ``dest`` is next staged."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir (not mkdtemp, which makes it 0700) so a tree built in it gets the usual permissions.
    scratch = temporary_sibling(dest)
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty directory beside ``dest`` to build a tree in; if the block succeeds, the
    tree replaces ``dest`` (``replace_dir``), otherwise it is deleted and ``dest`` is left as it
    was. One writer per ``dest`` at a time (what DVC and Snakemake guarantee for an output)."""
    remove_siblings(Path(dest), TEMP_MARK)   # stagings and scratch directories of killed writers
    with scratch_dir(dest) as staging:
        yield staging
        replace_dir(staging, dest)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(directory: Path) -> None:
    """Delete the temporaries killed writers left inside ``directory`` (recursively)."""
    for path in list(Path(directory).rglob(f"*{TEMP_MARK}*")):
        remove_path(path)


def remove_siblings(dest: Path, mark: str) -> None:
    """Delete the hidden siblings of ``dest`` named with ``mark`` (set-aside or staging trees)."""
    for path in list(dest.parent.glob(f".{dest.name}{mark}*")):
        remove_path(path)
