"""Fetch raw dataset archives: try each source in turn, verify checksums, extract safely.

A source is a local mirror directory (checked against its ``SHA256SUMS`` when it lists the
archive, else against the upstream md5) or the upstream URL (checked against the upstream md5).
Nothing unverified is ever used, and nothing partial is ever left behind: files are written to a
temporary name beside their destination and renamed into place only once verified, and the
extracted tree replaces the previous one only once it is complete.

Why so strict: dead download links that answer with an HTML page, unpickled as if it were the
data, are a known failure of meta-learning codebases (see shared/STYLE.md, "What to avoid").
"""

from __future__ import annotations

import http.client
import re
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


from gbml.data.checksums import CHUNK_BYTES, _copy_hashing
from gbml.errors import GbmlError
from gbml.io import scratch_dir, staged_dir, staged_file
from gbml.progress import progress as progress_bar

SHA256SUMS = "SHA256SUMS"
OMNIGLOT_FIX_HINT = (
    "To fix: point `data.omniglot.mirror` in params.yaml, or the GBML_OMNIGLOT_MIRROR environment "
    "variable, at a directory holding the archives (and optionally a SHA256SUMS file), or run "
    "where the upstream URL can be reached.")


class FetchError(GbmlError, RuntimeError):
    """A source could not provide a verified archive, or an archive is unsafe or corrupt."""


@dataclass(frozen=True)
class Archive:
    """One upstream archive: its file name, download URL and the upstream md5 checksum."""

    filename: str
    url: str
    md5: str


# Lake et al. (2015), the python/ release used by MAML (Finn et al. 2017) and Reptile (Nichol et al. 2018).
OMNIGLOT_ARCHIVES = (
    Archive("images_background.zip",
            "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
            "68d2efa1b9178cc56df9314c21c6e718"),
    Archive("images_evaluation.zip",
            "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
            "6b91aef0f799c5bb55b94e3f2daec811"),
)


def _require_digest(what: str, algorithm: str, actual: str, expected: str) -> None:
    if actual.lower() != expected.lower():
        raise FetchError(f"{what}: {algorithm} is {actual}, expected {expected}; "
                         "the file is corrupt, truncated or not the expected archive")


def _reject_html(url: str, content_type: str, first: bytes) -> None:
    """Refuse an HTML page served in place of the archive (dead links and login or
    confirmation pages answer 200 with HTML), by its Content-Type or by its first bytes."""
    head = first.lstrip()[:16].lower()
    if content_type == "text/html" or head.startswith((b"<!doctype", b"<html")):
        raise FetchError(f"{url} served an HTML page instead of the archive (Content-Type: "
                         f"{content_type}); the link is dead or needs a browser")


def download(url: str, dest: Path, md5: str, timeout: float, progress: bool = False) -> None:
    """Download ``url`` to ``dest``, verified against the upstream ``md5``; atomic, never partial."""
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "gbml-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, staged_file(dest) as tmp:
            first = response.read(CHUNK_BYTES)
            _reject_html(url, response.headers.get_content_type(), first)
            size = response.headers.get("Content-Length")
            with open(tmp, "wb") as out, progress_bar(total=int(size) if size else None, unit="B",
                                              unit_scale=True, desc=dest.name, disable=not progress) as bar:
                digests = _copy_hashing(response, out, ["md5"], first=first, bar=bar)
            _require_digest(url, "md5", digests["md5"], md5)
    except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise FetchError(f"could not download {url}: {exc}") from exc


def _listed_sha256(sums_file: Path, filename: str) -> str | None:
    """The sha256 that ``sums_file`` (``sha256sum`` format) lists for ``filename``, if any."""
    if not sums_file.is_file():
        return None
    for line in sums_file.read_text().splitlines():
        parts = line.split(maxsplit=1)
        # "*" marks binary mode in sha256sum output; it is not part of the name.
        if len(parts) == 2 and parts[1].strip().lstrip("*") == filename:
            return parts[0]
    return None


def copy_from_mirror(mirror_dir: Path, archive: Archive, dest: Path) -> None:
    """Copy ``archive`` from a mirror directory to ``dest``, verified; atomic, never partial.

    The mirror's own ``SHA256SUMS`` wins when it lists the file (a mirror may re-pack the archive,
    as shared/datasets/omniglot does); otherwise the upstream md5 must match; otherwise refuse.
    """
    mirror_dir, dest = Path(mirror_dir), Path(dest)
    if not mirror_dir.is_dir():
        raise FetchError(f"mirror directory {mirror_dir} does not exist")
    src = mirror_dir / archive.filename
    if not src.is_file():
        raise FetchError(f"{src} is not in the mirror")
    expected_sha256 = _listed_sha256(mirror_dir / SHA256SUMS, archive.filename)
    try:
        with staged_file(dest) as tmp:
            with open(src, "rb") as f, open(tmp, "wb") as out:
                digests = _copy_hashing(f, out, ["sha256", "md5"])
            if expected_sha256 is not None:
                _require_digest(f"{src} (checked against {mirror_dir / SHA256SUMS})", "sha256",
                                digests["sha256"], expected_sha256)
            else:
                _require_digest(f"{src} (not listed in a {SHA256SUMS} file, so checked against the "
                                "upstream md5; refusing an unverified archive)", "md5",
                                digests["md5"], archive.md5)
    except OSError as exc:
        raise FetchError(f"could not copy {src}: {exc}") from exc


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting this zip entry could write outside the destination, or None if it cannot."""
    name = info.filename
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        return "is a symbolic link"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "starts with a drive letter"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' component"
    return None


def safe_extract_zip(zip_path: Path, dest_dir: Path,
                     keep: Callable[[str], bool] | None = None) -> list[Path]:
    """Extract the files of ``zip_path`` (those whose name ``keep`` accepts) into ``dest_dir``.

    Every entry is checked before anything is written: absolute paths, drive letters, ``..``
    components and symbolic links are refused ("zip slip"), and so is an archive whose
    entries fail their CRC check or that is truncated.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            for info in members:
                reason = _unsafe_reason(info)
                if reason:
                    raise FetchError(f"{zip_path}: refusing to extract entry {info.filename!r}, which {reason}")
            corrupt = zf.testzip()
            if corrupt is not None:
                raise FetchError(f"{zip_path}: entry {corrupt!r} fails its CRC check; the archive is corrupt")
            dest_dir.mkdir(parents=True, exist_ok=True)
            return [Path(zf.extract(info, dest_dir)) for info in members
                    if not info.is_dir() and (keep is None or keep(info.filename))]
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise FetchError(f"{zip_path} is not a readable zip archive ({exc}); it is truncated or "
                         "corrupt: delete it and fetch again") from exc


def _is_payload(name: str) -> bool:
    """False for archiver metadata (``__MACOSX/``, ``.DS_Store``, ``._*``), which would make the
    extracted tree, and so its DVC hash, depend on which tool packed the archive."""
    parts = name.split("/")
    return parts[0] != "__MACOSX" and not parts[-1].startswith(".")


def _fetch_one(archive: Archive, dest: Path, mirror: Path | None, timeout: float, progress: bool,
               fix_hint: str) -> None:
    """Put a verified copy of ``archive`` at ``dest`` from the first source that works."""
    sources: list[tuple[str, Callable[[], None]]] = []
    if mirror is not None:
        sources.append((f"mirror {mirror}", lambda: copy_from_mirror(mirror, archive, dest)))
    sources.append((f"URL {archive.url}", lambda: download(archive.url, dest, archive.md5, timeout, progress)))
    failures = []
    for name, attempt in sources:
        try:
            attempt()
        except FetchError as exc:
            failures.append(f"  - {name}: {exc}")
            if progress:
                print(f"{archive.filename}: {name} failed: {exc}")
            continue
        if progress:
            print(f"{archive.filename}: verified copy from {name}")
        return
    raise FetchError(f"could not fetch {archive.filename}; every source failed:\n"
                     + "\n".join(failures) + f"\n{fix_hint}")


def fetch_archives(archives: Sequence[Archive], out_dir: Path, mirror: Path | None,
                   timeout: float = 60.0, progress: bool = True,
                   fix_hint: str = OMNIGLOT_FIX_HINT) -> Path:
    """Fetch, verify and extract ``archives`` into ``out_dir``; return ``out_dir``.

    Sources per archive, in order: ``mirror`` (if given), then the archive's URL. The archives go
    to a temporary directory and are extracted into a staging directory beside ``out_dir``, which
    replaces ``out_dir`` only when every archive is in. The tree holds only the archives' files, so
    it is byte-identical whichever source served them (DVC hashes it).
    """
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as staging, scratch_dir(out_dir) as downloads:
        for archive in archives:
            path = Path(downloads) / archive.filename
            _fetch_one(archive, path, mirror, timeout, progress, fix_hint)
            safe_extract_zip(path, staging, keep=_is_payload)
            path.unlink()  # keep at most one archive on disk beside the extracted tree
    return out_dir
