"""Omniglot (Lake et al. 2015) for few-shot classification: prepare once, load fast.

``prepare_omniglot`` turns the raw tree written by ``gbml fetch`` (1,623 characters by 20
drawers, 105x105 1-bit PNGs) into one uint8 array per split plus a manifest. Like MAML
(Finn et al. 2017, section 5.2) and Reptile (Nichol et al. 2018), characters of the background
and evaluation sets are pooled and split at random: Reptile's reference code uses 1200 train /
423 test, MAML's holds 100 of the 1200 out for validation (1100 / 100 / 423). The split is seeded
and its class names are written to the manifest, so it is an explicit artifact rather than a side
effect of a shuffle (shared/STYLE.md). Pixels keep Pillow's polarity, white (255) background and
black (0) strokes, as in Reptile's reference code.

Rotations by multiples of 90 degrees form new classes (Santoro et al. 2016, used by both papers);
they are recorded in the manifest and applied by ``gbml.data.prepared.load_split``, not stored
four times on disk.
"""

from __future__ import annotations

from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from gbml.errors import DataError, Fix
from gbml.data.prepared import ROTATIONS, write_prepared
from gbml.progress import progress as progress_bar

NUM_CHARACTERS = 1623
EXAMPLES_PER_CHARACTER = 20
SUBSETS = ("images_background", "images_evaluation")
SPLITS = ("train", "val", "test")
RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resample_filter(name: str) -> Image.Resampling:
    """The Pillow filter called ``name``; DataError listing the allowed names otherwise."""
    try:
        return RESAMPLE[name]
    except KeyError:
        raise DataError(f"unknown resample filter {name!r}; allowed: {', '.join(RESAMPLE)}") from None


def character_dirs(raw_dir: Path) -> list[str]:
    """Relative paths ``<subset>/<alphabet>/<character>`` of all 1,623 characters, sorted so the
    class order (and so the seeded split) does not depend on the file system's listing order."""
    raw_dir = Path(raw_dir)
    counts = {s: sum(1 for p in (raw_dir / s).glob("*/*") if p.is_dir()) for s in SUBSETS}
    if sum(counts.values()) != NUM_CHARACTERS:
        raise DataError(
            f"the raw Omniglot tree at {raw_dir} is incomplete: found {counts} character directories, "
            f"expected {NUM_CHARACTERS} (964 + 659); fetch it again", fix=Fix("fetch", "omniglot", force=True))
    return sorted(p.relative_to(raw_dir).as_posix()
                  for s in SUBSETS for p in (raw_dir / s).glob("*/*") if p.is_dir())


def load_image(path: Path, image_size: int, resample: Image.Resampling) -> np.ndarray:
    """One drawing as uint8 [image_size, image_size]: black strokes (0) on white (255)."""
    with Image.open(path) as img:
        # Greyscale first: Pillow resizes 1-bit images with nearest-neighbour whatever filter is
        # asked, which would silently turn the configured lanczos into aliased 0/255 pixels.
        grey = img.convert("L")
    return np.asarray(grey.resize((image_size, image_size), resample), dtype=np.uint8)


def load_character(char_dir: Path, image_size: int, resample: Image.Resampling) -> np.ndarray:
    """The 20 drawings of one character, sorted by file name, as uint8 [20, H, W]."""
    pngs = sorted(Path(char_dir).glob("*.png"))
    if len(pngs) != EXAMPLES_PER_CHARACTER:
        raise DataError(f"{char_dir} holds {len(pngs)} PNGs, expected {EXAMPLES_PER_CHARACTER}; fetch it again",
                        fix=Fix("fetch", "omniglot", force=True))
    return np.stack([load_image(p, image_size, resample) for p in pngs])


def split_classes(num_classes: int, num_train: int, num_val: int, seed: int) -> dict[str, np.ndarray]:
    """Class indices per split: a seeded permutation, cut into train, val and the rest as test.
    Indices within a split are sorted, so each split's array follows the sorted class names."""
    if num_train < 1 or num_val < 0 or num_train + num_val >= num_classes:
        raise DataError(f"need num_train >= 1, num_val >= 0 and num_train + num_val < {num_classes} "
                         f"(some test classes); got num_train={num_train}, num_val={num_val}")
    order = np.random.default_rng(seed).permutation(num_classes)
    cuts = np.split(order, [num_train, num_train + num_val])
    return {name: np.sort(idx) for name, idx in zip(SPLITS, cuts)}


def split_shapes(num_train: int, num_val: int, rotate_splits: Sequence[str] = ("train",), **_) -> dict[str, tuple[int, int]]:
    """(classes, examples per class) of each split ``prepare_omniglot`` writes, known from its
    settings alone, so params validation can check ways and shots before anything runs."""
    sizes = {"train": num_train, "val": num_val, "test": NUM_CHARACTERS - num_train - num_val}
    return {s: (n * (ROTATIONS if s in rotate_splits else 1), EXAMPLES_PER_CHARACTER) for s, n in sizes.items()}


def _check_rotate_splits(rotate_splits: Sequence[str]) -> list[str]:
    unknown = set(rotate_splits) - set(SPLITS)
    if unknown:
        raise DataError(f"rotate_splits may only name {', '.join(SPLITS)}; got {sorted(unknown)}")
    return [s for s in SPLITS if s in rotate_splits]


def _load_all(raw_dir: Path, classes: list[str], image_size: int, resample: Image.Resampling,
              workers: int) -> np.ndarray:
    """All characters as uint8 [1623, 20, H, W]; decoding and resizing run on ``workers`` processes."""
    load = partial(load_character, image_size=image_size, resample=resample)
    paths = [raw_dir / c for c in classes]
    bar = partial(progress_bar, desc="prepare omniglot", total=len(paths), unit="character")
    if workers <= 1:
        return np.stack([load(p) for p in bar(paths)])
    with Pool(workers) as pool:
        return np.stack(list(bar(pool.imap(load, paths, chunksize=32))))


def prepare_omniglot(raw_dir: Path, out_dir: Path, *, image_size: int = 28, resample: str = "lanczos",
                     num_train: int = 1200, num_val: int = 0, seed: int = 0,
                     rotate_splits: Sequence[str] = ("train",), workers: int = 2) -> dict:
    """Write ``train.npy``, ``val.npy``, ``test.npy`` (uint8 [classes, 20, H, W]) and
    ``manifest.json`` to ``out_dir``, replacing it atomically; return the manifest."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    resample_mode = resample_filter(resample)
    rotated = _check_rotate_splits(rotate_splits)
    split_idx = split_classes(NUM_CHARACTERS, num_train, num_val, seed)
    classes = character_dirs(raw_dir)
    images = _load_all(raw_dir, classes, image_size, resample_mode, workers)
    manifest = {
        "dataset": "omniglot",
        "image_size": image_size,
        "resample": resample,
        "greyscale_before_resize": True,
        "seed": seed,
        "split_sizes": {s: int(len(idx)) for s, idx in split_idx.items()},
        "examples_per_class": EXAMPLES_PER_CHARACTER,
        "rotate_splits": rotated,
        "rotations_degrees": [0, 90, 180, 270],
        "source": {**{s: sum(c.startswith(s + "/") for c in classes) for s in SUBSETS},
                   "characters": len(classes), "images": len(classes) * EXAMPLES_PER_CHARACTER},
        "classes": {s: [classes[i] for i in idx] for s, idx in split_idx.items()},
        "sha256": {},
    }
    return write_prepared(out_dir, {split: images[idx] for split, idx in split_idx.items()}, manifest)
