"""Checksums of files and streams, read in chunks so large archives need little memory: what
fetching verifies archives with and what prepared data records (and is checked against).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1 << 20


def _hasher(algorithm: str):
    # usedforsecurity=False: md5 is an integrity check here, and FIPS builds refuse it otherwise.
    return hashlib.new(algorithm, usedforsecurity=False)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path``, read in chunks so large archives need little memory."""
    h = _hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _copy_hashing(src: BinaryIO, dst: BinaryIO, algorithms: Sequence[str], first: bytes = b"",
                  bar=None) -> dict[str, str]:
    """Copy ``first`` and then the rest of ``src`` to ``dst``; return the digests of what was copied."""
    hashers = {a: _hasher(a) for a in algorithms}
    chunk = first or src.read(CHUNK_BYTES)
    while chunk:
        dst.write(chunk)
        for h in hashers.values():
            h.update(chunk)
        if bar is not None:
            bar.update(len(chunk))
        chunk = src.read(CHUNK_BYTES)
    return {a: h.hexdigest() for a, h in hashers.items()}
