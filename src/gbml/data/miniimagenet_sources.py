"""Readers of the three Mini-ImageNet source forms (``gbml.data.miniimagenet`` describes them):
each turns its source into every split's images, uint8 [classes, images, 3, 84, 84] padded to
the split's largest class, with the per-class counts. ILSVRC byte ranges come from a local tar
or by HTTP range requests; pickle caches are loaded with an unpickler that admits arrays only.
"""

from __future__ import annotations

import io
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from gbml.data.checksums import file_digest
from gbml.data.miniimagenet_splits import SPLITS, MiniImageNetError, SplitSpec
from gbml.progress import progress as progress_bar

IMAGE_SIZE = 84
JPEG_MAGIC = b"\xff\xd8"


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
        for wnid, names in progress_bar(spec.ravi[split].items(), desc=f"prepare miniimagenet {split}",
                                        total=len(spec.ravi[split]), unit="class"):
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
                                    f"{needed:,}: the tar is truncated or not ILSVRC2012_img_train.tar; "
                                    "re-download it")
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
            for wnid in progress_bar(spec.classes(split), desc=f"prepare miniimagenet {split}", unit="class"):
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
            raise MiniImageNetError(f"{path}: image_data is {images.dtype} {images.shape}, "
                                    "expected uint8 [N, 84, 84, 3]")
        arrays = []
        for wnid in spec.classes(split):
            index = data["class_dict"].get(wnid)
            if index is None or len(index) != per_class:
                raise MiniImageNetError(f"{path}: class {wnid} has {0 if index is None else len(index)} images, "
                                        f"expected {per_class}; the cache does not hold the Ravi split")
            arrays.append(images[np.asarray(index)].transpose(0, 3, 1, 2))
        out[split] = stack_classes(arrays)
    return out
