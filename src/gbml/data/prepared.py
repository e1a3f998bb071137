"""Loading a prepared dataset (``data/prepared/<dataset>``), whichever dataset it is.

``gbml prepare`` writes one uint8 array per split, [classes, examples, H, W] (greyscale,
Omniglot) or [classes, examples, C, H, W] (colour, Mini-ImageNet), plus ``manifest.json`` with
each array's sha256 and, where classes differ in size, their true image counts
(``class_counts``; shorter classes are zero-padded and the padding is never sampled).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gbml.data.checksums import file_digest
from gbml.errors import DataError, Fix
from gbml.io import staged_dir



@dataclass
class FewShotSplit:
    """The images of one split: uint8 [classes, examples, C, H, W]; rotated copies, when the
    manifest asks for them, are extra classes (class 4c + k is class c rotated k * 90 degrees).
    ``counts`` holds each class's number of real images when classes differ in size, else None."""

    images: torch.Tensor
    name: str
    counts: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "FewShotSplit":
        return dataclasses.replace(self, images=self.images.to(device))


def write_prepared(out_dir: Path, arrays: dict[str, np.ndarray], manifest: dict) -> dict:
    """Write ``{split}.npy`` per array and ``manifest.json`` (with each array's sha256) to
    ``out_dir``, replacing it atomically; returns the manifest as written."""
    manifest = {**manifest, "sha256": {}}
    with staged_dir(Path(out_dir)) as staging:
        for split, array in arrays.items():
            path = staging / f"{split}.npy"
            np.save(path, array, allow_pickle=False)
            manifest["sha256"][path.name] = file_digest(path, "sha256")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(prepared_dir: Path) -> dict:
    """The manifest ``gbml prepare`` wrote; DataError if missing or unreadable."""
    path = Path(prepared_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc}); prepare the dataset again",
                        fix=Fix("prepare", Path(prepared_dir).name)) from exc


ROTATIONS = 4   # 0, 90, 180 and 270 degrees: each class of a rotated split becomes four


def with_rotations(images: torch.Tensor) -> torch.Tensor:
    """[C, N, 1, H, W] -> [4C, N, 1, H, W], class 4c + k being class c rotated by k * 90 degrees."""
    return torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(ROTATIONS)], dim=1).flatten(0, 1)


def verified_array(prepared_dir: Path, manifest: dict, split: str) -> np.ndarray:
    path = prepared_dir / f"{split}.npy"
    expected = manifest["sha256"].get(path.name)
    if expected is None:
        raise DataError(f"no split {split!r} in {prepared_dir / 'manifest.json'}; "
                         f"available: {', '.join(manifest['split_sizes'])}")
    remake = Fix("prepare", manifest.get("dataset", prepared_dir.name), force=True)
    try:
        actual = file_digest(path, "sha256")
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc}); prepare the dataset again", fix=remake) from exc
    if actual != expected:
        raise DataError(f"{path} does not match the sha256 in its manifest (corrupt or modified); "
                        "prepare the dataset again", fix=remake)
    return np.load(path, allow_pickle=False)


def usable_manifest(prepared_dir: Path) -> dict:
    """The manifest, or DataError when the dataset could not be prepared (no source)."""
    manifest = read_manifest(prepared_dir)
    if manifest.get("available") is False:
        raise DataError(f"{manifest['dataset']} was not prepared ({manifest['reason']}): {manifest['how_to']}, "
                        f"then prepare it; or leave it out of the grid with grid.{manifest['dataset']}: "
                        "{ways: [], shots: []}", fix=Fix("prepare", manifest["dataset"]))
    return manifest


def stored_split(prepared_dir: Path, manifest: dict, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One split as stored (verified, unrotated), with a channel axis, and its class counts."""
    images = torch.from_numpy(verified_array(prepared_dir, manifest, split))
    if images.ndim == 4:                      # greyscale: add the channel axis
        images = images.unsqueeze(2)
    counts = manifest.get("class_counts", {}).get(split)
    counts = None if counts is None or len(set(counts)) == 1 else torch.tensor(counts)
    return images, counts


def recut_split(prepared_dir: Path, manifest: dict, split: str, num_val: int) -> torch.Tensor:
    """``split`` after cutting the prepared training and validation characters again (training
    first, in their prepared order): ``num_val`` validation characters, the rest training."""
    if split == "test":
        return stored_split(prepared_dir, manifest, split)[0]
    pool = [stored_split(prepared_dir, manifest, s)[0] for s in ("train", "val")]
    pool = torch.cat([p for p in pool if p.numel()])
    if not 0 <= num_val < len(pool):
        raise DataError(f"data_view.num_val={num_val}: the prepared data has {len(pool)} training and validation "
                         "characters; a view keeps at least one for training")
    return pool[:len(pool) - num_val] if split == "train" else pool[len(pool) - num_val:]


def load_split(prepared_dir: Path, split: str, view: dict | None = None) -> FewShotSplit:
    """Load one prepared split, verified against the manifest's sha256, rotations applied if the
    manifest lists the split in ``rotate_splits``.

    ``view`` (an algorithm's ``data_view``, Omniglot only) reads the arrays the way that
    algorithm's reference code read Omniglot: ``num_val`` cuts the prepared training and
    validation characters again (Finn et al. 1100 / 100, Nichol et al. 1200 / 0; the 423 test
    characters stay as prepared), ``rotate_splits`` replaces the manifest's
    list of rotated splits, and ``invert`` flips the pixels (255 - x: cbfinn/maml's 1 - x).
    """
    prepared_dir = Path(prepared_dir)
    manifest = usable_manifest(prepared_dir)
    view = view or {}
    if view and manifest.get("dataset", "omniglot") != "omniglot":
        raise DataError(f"data_view applies to Omniglot only; {prepared_dir} holds {manifest['dataset']}")
    if "num_val" in view:
        images, counts = recut_split(prepared_dir, manifest, split, int(view["num_val"])), None
    else:
        images, counts = stored_split(prepared_dir, manifest, split)
    if view.get("invert"):
        images = 255 - images
    if split in view.get("rotate_splits", manifest.get("rotate_splits", [])):
        images = with_rotations(images)
        counts = None if counts is None else counts.repeat_interleave(ROTATIONS)
    return FewShotSplit(images=images, name=split, counts=counts)


def view_sizes(num_train: int, num_val: int, view: dict | None = None) -> tuple[int, int]:
    """Training and validation characters under ``view``, given the prepared ones."""
    if view and "num_val" in view:
        return num_train + num_val - int(view["num_val"]), int(view["num_val"])
    return num_train, num_val


def split_size(prepared_dir: Path, split: str, view: dict | None = None) -> int:
    """Characters (classes before rotation) of ``split`` under ``view``, from the manifest alone."""
    sizes = read_manifest(prepared_dir)["split_sizes"]
    if split == "test":
        return sizes.get(split, 0)
    train, val = view_sizes(sizes.get("train", 0), sizes.get("val", 0), view)
    return train if split == "train" else val
