"""A generated Mini-ImageNet stand-in (random JPEGs) in every source form the pipeline reads."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from gbml.data.miniimagenet_sources import to_array


def jpeg(rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, size=(int(rng.integers(60, 120)), int(rng.integers(60, 120)), 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_nested_tar(path: Path, images: dict[str, list[bytes]]) -> dict[str, list[tuple[str, int, int]]]:
    """ILSVRC2012_img_train.tar's layout (a tar of per-class tars); returns each JPEG's byte range."""
    inner = {}
    for wnid, jpegs in images.items():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i, data in enumerate(jpegs):
                info = tarfile.TarInfo(f"{wnid}_{i}.JPEG")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        inner[wnid] = buffer.getvalue()
    with tarfile.open(path, mode="w") as tar:
        for wnid, data in inner.items():
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ranges = {}
    with tarfile.open(path) as outer:
        for member in outer.getmembers():
            wnid = member.name.removesuffix(".tar")
            with tarfile.open(fileobj=outer.extractfile(member)) as tar:
                ranges[wnid] = [(m.name, member.offset_data + m.offset_data, member.offset_data + m.offset_data + m.size - 1)
                                for m in tar.getmembers()]
    return ranges


def make_standin(root: Path, classes: dict[str, list[str]], per_class: int,
                 short: tuple[str, str, int] | None = None) -> Path:
    """A Mini-ImageNet stand-in under ``root`` in all three source forms: ``ILSVRC2012_img_train.tar``
    (nested, like the real one), ``ravi/`` (Ravi-named JPEGs), ``caches/`` (the pickles), and the
    split definition ``reference/`` (Ravi CSVs, byte ranges, SHA256SUMS). ``short`` = (split,
    wnid, n): that class's byte ranges list only n images, as 16 real classes do."""
    rng = np.random.default_rng(0)
    images = {w: [jpeg(rng) for _ in range(per_class)] for split in classes for w in classes[split]}
    ranges = write_nested_tar(root / "ILSVRC2012_img_train.tar", images)

    ref, ravi = root / "reference", root / "ravi"
    ravi.mkdir()
    for split, wnids in classes.items():
        (ref / "ilsvrc2012-byte-ranges" / split).mkdir(parents=True)
        rows = ["filename,label"]
        for w in wnids:
            listed = ranges[w][: short[2]] if short and (split, w) == short[:2] else ranges[w]
            (ref / "ilsvrc2012-byte-ranges" / split / f"{w}.csv").write_text(
                "".join(f"{name},{a}-{b}\n" for name, a, b in listed))
            for i, data in enumerate(images[w]):
                (ravi / f"{w}{i:08d}.jpg").write_bytes(data)
                rows.append(f"{w}{i:08d}.jpg,{w}")
        (ref / "ravi-split").mkdir(exist_ok=True)
        (ref / "ravi-split" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(ref)}" for p in sorted(ref.rglob("*.csv"))]
    (ref / "SHA256SUMS").write_text("\n".join(sums) + "\n")

    caches = root / "caches"
    caches.mkdir()
    for split, wnids in classes.items():
        arrays = [to_array(data, "x").transpose(1, 2, 0) for w in wnids for data in images[w]]
        class_dict = {w: list(range(i * per_class, (i + 1) * per_class)) for i, w in enumerate(wnids)}
        with (caches / f"mini-imagenet-cache-{split}.pkl").open("wb") as f:
            pickle.dump({"image_data": np.stack(arrays), "class_dict": class_dict}, f)
    return root
