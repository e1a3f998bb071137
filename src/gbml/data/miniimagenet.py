"""Mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split used by MAML,
Reptile and MAML++: 100 ILSVRC-2012 classes, 64 / 16 / 20 for train / val / test, 600 images
each, resized to 84x84 RGB -- prepared from whichever form of the data a user has:

* ``ilsvrc_tar``: ``ILSVRC2012_img_train.tar`` (a local path or a URL), each image cut out by the
  byte ranges the Reptile code used (HTTP range requests for a URL), never unpacking the tar;
* ``ravi_folder``: a folder of Ravi-named JPEGs (``n0153282900000005.jpg`` ...);
* ``pickle_cache``: the ``mini-imagenet-cache-{train,val,test}.pkl`` files many projects share
  (a dict with ``image_data`` uint8 [N, 84, 84, 3] and ``class_dict`` {wnid: indices}). Pickle
  runs code on load, so they are read with an unpickler that admits numpy arrays and plain
  containers only, after the sha256 the user gives (if any) has been checked.

The split definitions travel with gbml (``gbml/reference/miniimagenet``) and are verified
against their ``SHA256SUMS`` before use. Whatever the source, the output is the prepared layout
Omniglot uses: ``{split}.npy`` uint8 [classes, images, 3, 84, 84] plus ``manifest.json`` with
counts and sha256, written atomically (a failure leaves no partial output). Within a class,
images keep the source's order: the Ravi CSV order, the byte-range CSV order, or ``class_dict``.

The byte ranges list fewer than 600 images for 16 of the 100 classes (597-599; the Reptile code
trained on exactly those). Classes are therefore stored padded to the split's largest class with
the true counts in the manifest (``class_counts``); padding is never sampled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gbml.data.miniimagenet_sources import IMAGE_SIZE, read_ilsvrc_tar, read_pickle_cache, read_ravi_folder
from gbml.data.miniimagenet_splits import REFERENCE, SPLITS, MiniImageNetError, SplitSpec, load_spec
from gbml.data.prepared import write_prepared

SOURCES = ("ilsvrc_tar", "ravi_folder", "pickle_cache")


def configured_source(params: dict) -> tuple[str | None, str | None]:
    """(kind, path or URL) from params data.miniimagenet; GBML_MINIIMAGENET_SOURCE / _PATH win."""
    cfg = params.get("data", {}).get("miniimagenet") or {}
    kind = os.environ.get("GBML_MINIIMAGENET_SOURCE") or cfg.get("source")
    path = os.environ.get("GBML_MINIIMAGENET_PATH") or cfg.get("path")
    return (kind, path) if kind and path else (None, None)


NO_SOURCE = "no Mini-ImageNet source configured"
HOW_TO_ADD = ("set data.miniimagenet.source (ilsvrc_tar, ravi_folder or pickle_cache) and "
              "data.miniimagenet.path in params.yaml, and give grid.miniimagenet its cells, e.g. "
              "{ways: [5], shots: [1, 5]} (README: 'Mini-ImageNet')")


def write_unavailable(out_dir: Path, reason: str, how_to: str) -> dict:
    """Without a source: a manifest that says why there is no data (the pipeline still completes,
    the report says "not run", and loading it for training names what to configure)."""
    manifest = {"dataset": "miniimagenet", "available": False, "reason": reason, "how_to": how_to,
                "split_sizes": {}, "sha256": {}}
    return write_prepared(out_dir, {}, manifest)


def check_split(split: str, array: np.ndarray, counts: list[int], spec: SplitSpec, exact: bool) -> None:
    """Every class of the split present, with the split's image count (at most it, for the byte
    ranges, which list a few images fewer for some classes)."""
    classes, per_class = len(spec.classes(split)), spec.images_per_class(split)
    if array.shape[0] != classes or array.shape[2:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise MiniImageNetError(f"{split}: got images {array.shape}, expected {classes} classes of "
                                f"[3, {IMAGE_SIZE}, {IMAGE_SIZE}]")
    wrong = [(w, n) for w, n in zip(spec.classes(split), counts) if n > per_class or (exact and n != per_class)]
    if wrong:
        raise MiniImageNetError(f"{split}: class {wrong[0][0]} has {wrong[0][1]} images, expected {per_class}")


def prepare_miniimagenet(source_kind: str, source: str | Path, out_dir: Path, *, reference: Path = REFERENCE,
                         sha256: dict[str, str] | None = None, timeout: float = 60.0) -> dict:
    """Read the source, check every split's shape against the split definition, and write
    ``{split}.npy`` + ``manifest.json`` to ``out_dir`` atomically; return the manifest."""
    spec = load_spec(reference)
    if source_kind == "ilsvrc_tar":
        images = read_ilsvrc_tar(str(source), spec, timeout)
    elif source_kind == "ravi_folder":
        images = read_ravi_folder(Path(source), spec)
    elif source_kind == "pickle_cache":
        images = read_pickle_cache(Path(source), spec, sha256)
    else:
        raise MiniImageNetError(f"unknown Mini-ImageNet source kind {source_kind!r}; one of {', '.join(SOURCES)}")
    manifest = {"dataset": "miniimagenet", "image_size": IMAGE_SIZE, "channels": 3, "source": source_kind,
                "split_sizes": {s: len(spec.classes(s)) for s in SPLITS},
                "examples_per_class": {s: int(images[s][0].shape[1]) for s in SPLITS},
                "class_counts": {s: images[s][1] for s in SPLITS},
                "rotate_splits": [], "classes": {s: spec.classes(s) for s in SPLITS}, "sha256": {}}
    for split in SPLITS:
        check_split(split, *images[split], spec, exact=source_kind != "ilsvrc_tar")
    return write_prepared(out_dir, {s: images[s][0] for s in SPLITS}, manifest)
