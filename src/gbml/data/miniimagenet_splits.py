"""Mini-ImageNet's split definitions (``gbml/reference/miniimagenet``): which ILSVRC-2012 images
make up each split, per class, as Ravi & Larochelle's file names and as the byte ranges of the
Reptile code, read only after every file has matched its ``SHA256SUMS``; and the error every
Mini-ImageNet step raises. Sources and preparation: ``gbml.data.miniimagenet``.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from gbml.errors import DataError

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "miniimagenet"
SPLITS = ("train", "val", "test")


class MiniImageNetError(DataError):
    """A Mini-ImageNet source problem; the message names the file and what to do."""


@dataclass(frozen=True)
class SplitSpec:
    """Which images make up each split, per class (wnid), in the order they are stored."""

    ravi: dict[str, dict[str, list[str]]]                        # split -> wnid -> Ravi filenames
    ranges: dict[str, dict[str, list[tuple[str, int, int]]]]     # split -> wnid -> (name, first, last)

    def classes(self, split: str) -> list[str]:
        return list(self.ravi[split])

    def images_per_class(self, split: str) -> int:
        counts = {len(files) for files in self.ravi[split].values()}
        if len(counts) != 1:
            raise MiniImageNetError(f"split {split}: classes have different image counts {sorted(counts)}")
        return counts.pop()


def split_shapes(source_kind: str | None, reference: Path = REFERENCE) -> dict[str, tuple[int, int]]:
    """(classes, fewest images of a class) per split, from the split definition: the ILSVRC byte
    ranges list 597-600 images per class, the Ravi split 600."""
    spec = load_spec(reference)
    shapes = {}
    for split in SPLITS:
        lists = spec.ranges[split] if source_kind == "ilsvrc_tar" and spec.ranges[split] else spec.ravi[split]
        shapes[split] = (len(spec.classes(split)), min(map(len, lists.values())))
    return shapes


def verified_files(reference: Path) -> dict[str, bytes]:
    """Every file ``SHA256SUMS`` lists, read and checked, keyed by its relative path."""
    sums = reference / "SHA256SUMS"
    if not sums.is_file():
        raise MiniImageNetError(f"{sums} is missing: the Mini-ImageNet split files are incomplete; "
                                "reinstall gbml (or restore src/gbml/reference/miniimagenet)")
    files = {}
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        name = name.removeprefix("./")
        data = (reference / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise MiniImageNetError(f"{reference / name} does not match {sums}; restore it from the gbml "
                                    "repository (the split definition must be exact)")
        files[name] = data
    return files


def load_spec(reference: Path = REFERENCE) -> SplitSpec:
    files = verified_files(Path(reference))
    ravi: dict[str, dict[str, list[str]]] = {}
    ranges: dict[str, dict[str, list[tuple[str, int, int]]]] = {s: {} for s in SPLITS}
    for split in SPLITS:
        ravi[split] = {}
        for row in csv.DictReader(io.StringIO(files[f"ravi-split/{split}.csv"].decode())):
            ravi[split].setdefault(row["label"], []).append(row["filename"])
    for name, data in sorted(files.items()):
        parts = name.split("/")
        if parts[0] == "ilsvrc2012-byte-ranges":
            rows = csv.reader(io.StringIO(data.decode()))
            ranges[parts[1]][parts[2].removesuffix(".csv")] = [
                (jpeg, int(span.split("-")[0]), int(span.split("-")[1])) for jpeg, span in rows]
    return SplitSpec(ravi=ravi, ranges=ranges)
