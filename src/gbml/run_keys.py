"""A run's key: one hash of everything that determines its outputs, and the tag that carries it.

Training, the sine study and the study summaries derive a key (``run_key``) from their resolved
config, inputs and code (``source_fingerprint``) and tag their MLflow run with it, so that
``gbml.tracking`` (``Tracker.reuse``) can find a finished run of the same configuration. Plain
hashing, no MLflow. The module sits at the package's top so that the fingerprint covers every
module of gbml.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RUN_KEY_TAG = "gbml.run_key"


def run_key(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def source_fingerprint() -> str:
    """sha256 over gbml's Python sources: a code change gives new keys (and new runs)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()

