"""Fetching raw archives: every byte used is verified, nothing unsafe or partial is written,
sources are tried in order and a total failure says what was tried and how to fix it."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from gbml.data.fetch import (Archive, FetchError, copy_from_mirror, download, fetch_archives,
                             safe_extract_zip)

UNREACHABLE = "http://127.0.0.1:9/x.zip"  # the discard port: connection refused at once
PNG_NAME = "tiny/Alphabet/character01/01_01.png"


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


TINY_ZIP = zip_bytes({PNG_NAME: b"\x89PNG pretend image", "tiny/Alphabet/character01/01_02.png": b"\x89PNG 2"})
TINY_MD5 = hashlib.md5(TINY_ZIP).hexdigest()


def tiny_archive(url: str = UNREACHABLE, md5: str = TINY_MD5) -> Archive:
    return Archive("tiny.zip", url, md5)


@pytest.fixture
def mirror(tmp_path) -> Path:
    path = tmp_path / "mirror"
    path.mkdir()
    (path / "tiny.zip").write_bytes(TINY_ZIP)
    return path


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving the files of a fresh directory; yields (dir, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def listing(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


# --- checksums ---------------------------------------------------------------------------------

def test_download_with_wrong_md5_fails_clearly_and_leaves_no_partial_file(server, tmp_path):
    root, base = server
    (root / "tiny.zip").write_bytes(TINY_ZIP)
    dest_dir = tmp_path / "dest"
    with pytest.raises(FetchError, match=r"md5 is [0-9a-f]{32}, expected 0{32}"):
        download(f"{base}/tiny.zip", dest_dir / "tiny.zip", "0" * 32, timeout=5)
    assert listing(dest_dir) == []


def test_download_with_right_md5_writes_the_archive(server, tmp_path):
    root, base = server
    (root / "tiny.zip").write_bytes(TINY_ZIP)
    download(f"{base}/tiny.zip", tmp_path / "tiny.zip", TINY_MD5, timeout=5)
    assert listing(tmp_path) == ["served", "served/tiny.zip", "tiny.zip"]
    assert (tmp_path / "tiny.zip").read_bytes() == TINY_ZIP


def test_mirror_copy_with_wrong_md5_and_no_sha256sums_is_refused(mirror, tmp_path):
    dest_dir = tmp_path / "dest"
    with pytest.raises(FetchError, match="not listed in a SHA256SUMS file.*refusing"):
        copy_from_mirror(mirror, tiny_archive(md5="0" * 32), dest_dir / "tiny.zip")
    assert listing(dest_dir) == []


def test_mirror_sha256sums_takes_precedence_over_the_upstream_md5(mirror, tmp_path):
    # A mirror may re-pack an archive (shared/datasets/omniglot does), so its own checksum wins.
    sha = hashlib.sha256(TINY_ZIP).hexdigest()
    (mirror / "SHA256SUMS").write_text(f"{'f' * 64}  other.zip\n{sha}  tiny.zip\n")
    copy_from_mirror(mirror, tiny_archive(md5="0" * 32), tmp_path / "ok.zip")
    assert (tmp_path / "ok.zip").read_bytes() == TINY_ZIP

    (mirror / "SHA256SUMS").write_text(f"{'f' * 64}  tiny.zip\n")
    with pytest.raises(FetchError, match=r"sha256 is [0-9a-f]{64}, expected f{64}"):
        copy_from_mirror(mirror, tiny_archive(), tmp_path / "bad.zip")
    assert not (tmp_path / "bad.zip").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- HTML served instead of the archive --------------------------------------------------------

HTML = b"<!DOCTYPE html>\n<html><body>Sorry, this file cannot be scanned for viruses.</body></html>\n"


@pytest.mark.parametrize("name", ["page.html", "looks-like.zip"],
                         ids=["content-type-text-html", "html-bytes-under-a-zip-name"])
def test_an_html_page_served_instead_of_the_archive_is_rejected(server, tmp_path, name):
    root, base = server
    (root / name).write_bytes(HTML)
    with pytest.raises(FetchError, match="served an HTML page instead of the archive"):
        download(f"{base}/{name}", tmp_path / "dest" / "a.zip", hashlib.md5(HTML).hexdigest(), timeout=5)
    assert listing(tmp_path / "dest") == []


# --- safe extraction ---------------------------------------------------------------------------

def symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("tiny/link")
        info.external_attr = 0o120777 << 16  # S_IFLNK: the entry is a symbolic link
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("evil, reason", [
    ("../evil.png", "'..' component"),
    ("tiny/../../evil.png", "'..' component"),
    ("/tmp/evil.png", "absolute path"),
    ("C:/evil.png", "drive letter"),
])
def test_zip_entries_escaping_the_destination_are_rejected_before_anything_is_written(tmp_path, evil, reason):
    path = tmp_path / "work" / "evil.zip"
    path.parent.mkdir()
    # The harmless entry comes first: a checker that stops at the bad entry must not have written it.
    path.write_bytes(zip_bytes({PNG_NAME: b"ok", evil: b"pwned"}))
    with pytest.raises(FetchError, match=rf"entry '{evil}'.*{reason}"):
        safe_extract_zip(path, tmp_path / "work" / "out")
    assert listing(tmp_path) == ["work", "work/evil.zip"]


def test_symlink_entries_are_rejected(tmp_path):
    path = tmp_path / "link.zip"
    path.write_bytes(symlink_zip())
    with pytest.raises(FetchError, match="'tiny/link'.*symbolic link"):
        safe_extract_zip(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_truncated_zip_is_rejected(tmp_path):
    path = tmp_path / "cut.zip"
    path.write_bytes(TINY_ZIP[: len(TINY_ZIP) // 2])
    with pytest.raises(FetchError, match="not a readable zip archive.*truncated or corrupt"):
        safe_extract_zip(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_with_corrupted_contents_fails_its_crc_check(tmp_path):
    data = bytearray(TINY_ZIP)
    data[data.index(b"pretend")] ^= 0xFF  # stored, not deflated: the byte is in the file data
    path = tmp_path / "flipped.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(FetchError, match=f"'{PNG_NAME}' fails its CRC check"):
        safe_extract_zip(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- sources in order --------------------------------------------------------------------------

def test_the_mirror_is_used_when_the_url_cannot_be_reached(mirror, tmp_path, capsys):
    out = fetch_archives([tiny_archive()], tmp_path / "raw", mirror, timeout=2)
    assert (out / PNG_NAME).read_bytes() == b"\x89PNG pretend image"
    assert "tiny.zip: verified copy from mirror" in capsys.readouterr().out


def test_the_url_is_used_when_the_mirror_directory_is_missing(server, tmp_path, capsys):
    root, base = server
    (root / "tiny.zip").write_bytes(TINY_ZIP)
    out = fetch_archives([tiny_archive(url=f"{base}/tiny.zip")], tmp_path / "raw",
                         tmp_path / "no-such-mirror", timeout=5)
    assert (out / PNG_NAME).read_bytes() == b"\x89PNG pretend image"
    printed = capsys.readouterr().out
    assert "does not exist" in printed and "verified copy from URL" in printed


def test_when_every_source_fails_one_error_lists_each_source_and_the_fix(tmp_path):
    missing_mirror = tmp_path / "no-such-mirror"
    with pytest.raises(FetchError) as excinfo:
        fetch_archives([tiny_archive()], tmp_path / "raw", missing_mirror, timeout=2, progress=False)
    message = str(excinfo.value)
    assert f"mirror {missing_mirror}: mirror directory {missing_mirror} does not exist" in message
    assert f"URL {UNREACHABLE}: could not download {UNREACHABLE}" in message
    assert "data.omniglot.mirror" in message and "GBML_OMNIGLOT_MIRROR" in message
    assert listing(tmp_path) == []  # no out_dir, no staging or download leftovers


def test_a_failed_fetch_keeps_the_previous_tree_and_a_successful_one_replaces_it(mirror, tmp_path):
    out = tmp_path / "raw"
    (out / "old").mkdir(parents=True)
    (out / "old" / "stale.png").write_bytes(b"stale")
    # The first archive is extracted before the second fails: the half-built tree must not land.
    with pytest.raises(FetchError, match="every source failed"):
        fetch_archives([tiny_archive(), tiny_archive(md5="0" * 32)], out, mirror, timeout=2, progress=False)
    assert listing(out) == ["old", "old/stale.png"]

    fetch_archives([tiny_archive()], out, mirror, progress=False)
    assert listing(out) == ["tiny", "tiny/Alphabet", "tiny/Alphabet/character01",
                            "tiny/Alphabet/character01/01_01.png", "tiny/Alphabet/character01/01_02.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "raw"]


def test_archiver_metadata_is_not_extracted(tmp_path):
    # Keeps the tree (and its DVC hash) independent of which tool packed the archive.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = zip_bytes({PNG_NAME: b"png", "__MACOSX/tiny/._01_01.png": b"meta", "tiny/.DS_Store": b"meta"})
    (mirror / "tiny.zip").write_bytes(data)
    out = fetch_archives([tiny_archive(md5=hashlib.md5(data).hexdigest())], tmp_path / "raw", mirror,
                         progress=False)
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == [PNG_NAME]


# --- the real mirrored Omniglot ----------------------------------------------------------------

def test_fetching_the_real_omniglot_from_the_mirror_yields_964_plus_659_characters(omniglot_raw):
    for subset, characters, alphabets in [("images_background", 964, 30), ("images_evaluation", 659, 20)]:
        assert len([p for p in (omniglot_raw / subset).iterdir() if p.is_dir()]) == alphabets
        char_dirs = [p for p in (omniglot_raw / subset).glob("*/*") if p.is_dir()]
        assert len(char_dirs) == characters
        assert sum(1 for _ in (omniglot_raw / subset).glob("*/*/*.png")) == 20 * characters
    assert sorted(p.name for p in omniglot_raw.iterdir()) == ["images_background", "images_evaluation"]
