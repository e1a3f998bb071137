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
from gbml.data.omniglot import prepare_omniglot

REPO = Path(__file__).resolve().parents[1]
# The two published Omniglot protocols (Nichol et al.; Finn et al.), prepared once per session.
REPTILE = dict(num_train=1200, num_val=0, seed=0, rotate_splits=("train",))
MAML = dict(num_train=1100, num_val=100, seed=0, rotate_splits=("train", "val"))


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


@pytest.fixture(scope="session")
def reptile_dir(omniglot_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "reptile"
    prepare_omniglot(omniglot_raw, out, **REPTILE)
    return out


@pytest.fixture(scope="session")
def maml_dir(omniglot_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "maml"
    prepare_omniglot(omniglot_raw, out, **MAML)
    return out
