"""Dataset lineage: which prepared data a run read, recorded as MLflow dataset inputs
(``log_inputs``, shown on the run page under "Datasets used"), so that every run points to the
exact bytes it trained or was scored on.

Each input is one prepared split (``omniglot/train``, ``omniglot/val``, ``omniglot/test``) with
its context (training, validation, evaluation) and, in its profile: the split file's sha256 from
the prepared manifest, the manifest's own sha256, the data view (if the run restricts the split)
and the DVC hash of the prepared directory -- the ``md5`` that ``dvc.lock`` records for the
``prepare`` stage's output (computed here the way DVC 3 does, so that Snakemake's runs carry it
too). The same DVC hash is a run tag, ``gbml.data.dvc_md5``, to search runs by their data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gbml.data.prepared import read_manifest

CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}
DIGEST_CHARS = 16   # MLflow stores a dataset digest in 36 characters at most
SNAKEMAKE_MARKER = ".snakemake_timestamp"   # Snakemake's mark of when it wrote a directory output


def dvc_dir_md5(path: Path) -> str:
    """DVC 3's hash of a directory output: the md5 of the JSON list of its files' md5 and
    relative paths, sorted by path, with ``.dir`` appended (as in ``dvc.lock``). Snakemake's
    marker file in a directory output is left out, as ``.dvcignore`` has DVC leave it out, so both
    engines' runs carry the same hash for the same data."""
    path = Path(path)
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
               for p in sorted(path.rglob("*")) if p.is_file() and p.name != SNAKEMAKE_MARKER]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_inputs(prepared_dir: Path, splits: tuple[str, ...], view: dict | None = None) -> list[dict]:
    """What ``Tracker.log_inputs`` records for each split: name, digest, source, profile, context."""
    out, prepared_dir = dvc_out(prepared_dir), Path(prepared_dir).resolve()
    manifest = read_manifest(prepared_dir)
    manifest_sha256 = hashlib.sha256((prepared_dir / "manifest.json").read_bytes()).hexdigest()
    dvc_md5 = dvc_dir_md5(prepared_dir)
    inputs = []
    for split in splits:
        sha256 = manifest.get("sha256", {}).get(f"{split}.npy", "")
        profile = {"sha256": sha256, "manifest_sha256": manifest_sha256, "dvc_out": out,
                   "dvc_md5": dvc_md5, "classes": manifest.get("split_sizes", {}).get(split)}
        if view:
            profile["data_view"] = view
        inputs.append({"name": f"{manifest['dataset']}/{split}", "digest": (sha256 or dvc_md5)[:DIGEST_CHARS],
                       "source": (prepared_dir / f"{split}.npy").as_uri(), "profile": profile,
                       "context": CONTEXTS.get(split, split)})
    return inputs


def dvc_out(prepared_dir: Path) -> str:
    """The output's path as dvc.yaml names it (``data/prepared/<dataset>``)."""
    return "/".join(Path(prepared_dir).parts[-3:])
