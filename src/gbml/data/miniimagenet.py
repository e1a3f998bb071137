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

import csv
import hashlib
import io
import os
import pickle
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gbml.errors import DataError
from gbml.data.fetch import file_digest
from gbml.data.prepared import write_prepared

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "miniimagenet"
SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
SOURCES = ("ilsvrc_tar", "ravi_folder", "pickle_cache")
JPEG_MAGIC = b"\xff\xd8"


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


# --- the split definitions ---------------------------------------------------------------------

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


# --- images -----------------------------------------------------------------------------------

def to_array(data: bytes, what: str) -> np.ndarray:
    """A JPEG (or any Pillow image) as uint8 [3, 84, 84], RGB, LANCZOS-resized as MAML's script."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, Image.DecompressionBombError) as exc:
        raise MiniImageNetError(f"{what}: not a readable image ({exc})") from exc


Images = dict[str, tuple[np.ndarray, list[int]]]   # split -> (padded [C, N, 3, 84, 84], per-class counts)


def stack_classes(per_class: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Classes of [n_c, 3, 84, 84] as one array padded (with zeros) to the largest n_c."""
    counts = [len(a) for a in per_class]
    out = np.zeros((len(per_class), max(counts), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for c, images in enumerate(per_class):
        out[c, : len(images)] = images
    return out, counts


def read_ravi_folder(folder: Path, spec: SplitSpec) -> Images:
    folder = Path(folder)
    if not folder.is_dir():
        raise MiniImageNetError(f"{folder}: no such folder of Ravi-named images (n0153282900000005.jpg ...)")
    out = {}
    for split in SPLITS:
        arrays = []
        for wnid, names in spec.ravi[split].items():
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise MiniImageNetError(f"{folder}: class {wnid} lacks {len(missing)} of its {len(names)} images "
                                        f"(first: {missing[0]}); the folder must hold every image of the split")
            arrays.append(np.stack([to_array((folder / n).read_bytes(), str(folder / n)) for n in names]))
        out[split] = stack_classes(arrays)
    return out


class LocalRanges:
    """Byte ranges of a local file."""

    def __init__(self, path: Path, needed: int):
        self.path, self.name = Path(path), str(path)
        if not self.path.is_file():
            raise MiniImageNetError(f"{path}: no such file (expected ILSVRC2012_img_train.tar)")
        size = self.path.stat().st_size
        if size < needed:
            raise MiniImageNetError(f"{path} has {size:,} bytes but the Mini-ImageNet images end at byte "
                                    f"{needed:,}: the tar is truncated or not ILSVRC2012_img_train.tar; re-download it")
        self.file = self.path.open("rb")

    def read(self, first: int, last: int) -> bytes:
        self.file.seek(first)
        return self.file.read(last - first + 1)

    def close(self) -> None:
        self.file.close()


class HttpRanges:
    """Byte ranges of a URL, one HTTP range request each (as Reptile's fetch script)."""

    def __init__(self, url: str, timeout: float):
        self.name, self.timeout = url, timeout

    def read(self, first: int, last: int) -> bytes:
        request = urllib.request.Request(self.name, headers={"Range": f"bytes={first}-{last}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                if response.status != 206:
                    raise MiniImageNetError(f"{self.name} ignored the range request (HTTP {response.status}); "
                                            "use a server that supports byte ranges, or download the tar")
                if "html" in response.headers.get("Content-Type", ""):
                    raise MiniImageNetError(f"{self.name} answered with an HTML page, not tar bytes "
                                            "(a login or error page?)")
                return response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise MiniImageNetError(f"cannot read bytes {first}-{last} of {self.name} ({exc}); check the URL "
                                    "and the network, or give a local path to the tar") from exc

    def close(self) -> None:
        pass


def read_ilsvrc_tar(source: str, spec: SplitSpec, timeout: float = 60.0) -> Images:
    """Cut every image of the split out of ``ILSVRC2012_img_train.tar`` by its byte range."""
    needed = max(last + 1 for split in SPLITS for rows in spec.ranges[split].values() for _, _, last in rows)
    is_url = str(source).startswith(("http://", "https://"))
    reader = HttpRanges(str(source), timeout) if is_url else LocalRanges(Path(source), needed)
    try:
        out = {}
        for split in SPLITS:
            arrays = []
            for wnid in spec.classes(split):
                arrays.append(np.stack([_cut_jpeg(reader, name, first, last)
                                        for name, first, last in spec.ranges[split][wnid]]))
            out[split] = stack_classes(arrays)
        return out
    finally:
        reader.close()


def _cut_jpeg(reader, name: str, first: int, last: int) -> np.ndarray:
    data = reader.read(first, last)
    what = f"{name} (bytes {first}-{last} of {reader.name})"
    if len(data) != last - first + 1 or not data.startswith(JPEG_MAGIC):
        raise MiniImageNetError(f"{what} is not a JPEG: the source is not the original "
                                "ILSVRC2012_img_train.tar (or it is damaged); re-download it")
    return to_array(data, what)


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and plain containers; anything else (the way a pickle runs
    code) is refused before it is loaded."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain "
                                         "containers are allowed in a Mini-ImageNet cache")
        return super().find_class(module, name)


def load_cache(path: Path, sha256: str | None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MiniImageNetError(f"{path}: no such pickle cache (expected mini-imagenet-cache-<split>.pkl)")
    if sha256 and file_digest(path, "sha256") != sha256.lower():
        raise MiniImageNetError(f"{path} does not match the sha256 given for it; re-download it or fix "
                                "the checksum in params.yaml")
    with path.open("rb") as f:
        head = f.read(64).lstrip()
    if head[:1] == b"<":
        raise MiniImageNetError(f"{path} is an HTML page, not a pickle (a failed download?); re-download it")
    try:
        with path.open("rb") as f:
            data = ArraysOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise MiniImageNetError(f"{path}: not a usable Mini-ImageNet cache ({exc})") from exc
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        raise MiniImageNetError(f"{path}: expected a dict with 'image_data' and 'class_dict'")
    return data


def read_pickle_cache(folder: Path, spec: SplitSpec, sha256: dict[str, str] | None = None) -> Images:
    out = {}
    for split in SPLITS:
        path = Path(folder) / f"mini-imagenet-cache-{split}.pkl"
        data = load_cache(path, (sha256 or {}).get(split))
        images, per_class = np.asarray(data["image_data"]), spec.images_per_class(split)
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise MiniImageNetError(f"{path}: image_data is {images.dtype} {images.shape}, expected uint8 [N, 84, 84, 3]")
        arrays = []
        for wnid in spec.classes(split):
            index = data["class_dict"].get(wnid)
            if index is None or len(index) != per_class:
                raise MiniImageNetError(f"{path}: class {wnid} has {0 if index is None else len(index)} images, "
                                        f"expected {per_class}; the cache does not hold the Ravi split")
            arrays.append(images[np.asarray(index)].transpose(0, 3, 1, 2))
        out[split] = stack_classes(arrays)
    return out


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
