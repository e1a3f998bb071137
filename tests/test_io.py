"""Atomic files and directories (src/gbml/io.py): a reader sees the old version or the complete
new one, never a mix, whatever stops the writer; a killed writer's leftovers are never published."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gbml.io import (OLD_MARK, TEMP_MARK, replace_dir, staged_dir, temporary_sibling, write_atomic,
                     write_text_atomic)


def test_temporary_names_are_unique_hidden_and_keep_the_suffix(tmp_path):
    names = {temporary_sibling(tmp_path / "curve.png").name for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(f".curve.png{TEMP_MARK}{os.getpid()}-") and n.endswith(".png") for n in names)


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old")

    def full_disk(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(path, full_disk, durable=True)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_swap_puts_the_previous_directory_back(tmp_path, monkeypatch):
    dest, staged = tmp_path / "run", tmp_path / "staged"
    dest.mkdir(), staged.mkdir()
    (dest / "old.txt").write_text("old")
    real_rename = Path.rename

    def rename(self, target):
        if self == staged:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        replace_dir(staged, dest)
    assert [p.name for p in dest.iterdir()] == ["old.txt"]


def test_a_swap_killed_half_way_is_cleared_by_the_next_one(tmp_path):
    dest = tmp_path / "run"
    dest.mkdir()
    set_aside = temporary_sibling(dest, OLD_MARK)   # what a kill between the two renames leaves
    dest.rename(set_aside)
    with staged_dir(dest) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in dest.iterdir()] == ["new.txt"]


def test_a_killed_writers_temporaries_and_stagings_are_never_published(tmp_path):
    dest = tmp_path / "evals"
    temporary_sibling(dest).mkdir()                        # a killed writer's staging beside it
    with staged_dir(dest) as staging:
        (staging / "sub").mkdir()
        temporary_sibling(staging / "sub" / "checkpoint.pt").write_bytes(b"half")   # and a temporary inside
        (staging / "per_task.csv").write_text("task,mode,accuracy\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evals"]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["per_task.csv", "sub"]


def test_a_failing_block_leaves_the_destination_as_it_was(tmp_path):
    dest = tmp_path / "evals"
    dest.mkdir()
    (dest / "metrics.json").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(dest) as staging:
        (staging / "metrics.json").write_text("new")
        raise RuntimeError("evaluation failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evals"]
    assert (dest / "metrics.json").read_text() == "old"


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    """DVC hashes run directories: a checkpoint's bytes must not depend on its temporary's name."""
    import torch

    from gbml.io import save_checkpoint
    state = {"model": {"w": torch.arange(6.0)}, "generator": torch.Generator().get_state()}
    save_checkpoint(tmp_path / "a.pt", state)
    save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
