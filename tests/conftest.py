"""Shared real-data fixtures: the mirrored Omniglot (shared/datasets/omniglot, or the directory
named by GBML_OMNIGLOT_MIRROR), fetched once per test session. Tests that need it fail, not
skip, when it is absent: a silently skipped data test is a test that never runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gbml.data.fetch import OMNIGLOT_ARCHIVES, fetch_archives

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def omniglot_mirror() -> Path:
    path = Path(os.environ.get("GBML_OMNIGLOT_MIRROR", REPO.parent / "shared" / "datasets" / "omniglot"))
    missing = [a.filename for a in OMNIGLOT_ARCHIVES if not (path / a.filename).is_file()]
    if missing:
        pytest.fail(f"real Omniglot mirror incomplete at {path} (missing {', '.join(missing)}); "
                    "set GBML_OMNIGLOT_MIRROR to a directory holding the Omniglot archives")
    return path.resolve()


@pytest.fixture(scope="session")
def omniglot_raw(omniglot_mirror, tmp_path_factory) -> Iterator[Path]:
    """The raw Omniglot tree, fetched from the mirror once per session."""
    raw = fetch_archives(OMNIGLOT_ARCHIVES, tmp_path_factory.mktemp("omniglot") / "raw",
                         omniglot_mirror, progress=False)
    yield raw
    # Delete the 32,460 files while their inodes are cached: pytest's own clean-up of old base
    # temp dirs, sessions later, unlinks them cold and took over a minute on the 2-core CI VM.
    shutil.rmtree(raw, ignore_errors=True)
