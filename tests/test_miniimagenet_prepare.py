"""Mini-ImageNet preparation from each source form, on a small generated stand-in (a few classes
of random JPEGs inside a nested ILSVRC-style tar, a Ravi-named folder, and pickle caches)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from gbml.data.miniimagenet import prepare_miniimagenet
from gbml.data.miniimagenet_sources import IMAGE_SIZE
from gbml.data.miniimagenet_splits import MiniImageNetError, load_spec
from miniimagenet_standin import make_standin

CLASSES = {"train": ["n01000001", "n01000002"], "val": ["n01000003"], "test": ["n01000004", "n01000005"]}
PER_CLASS = 4
SHORT = ("test", "n01000005", 3)   # like 16 real classes, the byte ranges list fewer images


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return make_standin(tmp_path_factory.mktemp("miniimagenet"), CLASSES, PER_CLASS, SHORT)


def prepare(standin, kind, out_name, **kwargs):
    source = {"ilsvrc_tar": standin / "ILSVRC2012_img_train.tar", "ravi_folder": standin / "ravi",
              "pickle_cache": standin / "caches"}[kind]
    kwargs.setdefault("source", source)
    return prepare_miniimagenet(kind, kwargs.pop("source"), standin / out_name, reference=standin / "reference", **kwargs)


def test_the_shipped_split_is_ravi_and_larochelles_and_the_byte_ranges_cover_its_classes():
    spec = load_spec()
    for split, classes in {"train": 64, "val": 16, "test": 20}.items():
        assert len(spec.classes(split)) == classes and spec.images_per_class(split) == 600
        assert set(spec.ranges[split]) == set(spec.classes(split))
    short = {w: len(r) for s in spec.ranges for w, r in spec.ranges[s].items() if len(r) != 600}
    assert len(short) == 16 and set(short.values()) <= {597, 598, 599}


@pytest.mark.parametrize("kind", ["ravi_folder", "ilsvrc_tar", "pickle_cache"])
def test_every_source_gives_the_same_84x84_rgb_images(standin, kind):
    manifest = prepare(standin, kind, f"out-{kind}")
    reference = prepare(standin, "ravi_folder", "out-reference")
    out = standin / f"out-{kind}"
    for split, wnids in CLASSES.items():
        images = np.load(out / f"{split}.npy", allow_pickle=False)
        assert images.dtype == np.uint8 and images.shape == (len(wnids), PER_CLASS, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert hashlib.sha256((out / f"{split}.npy").read_bytes()).hexdigest() == manifest["sha256"][f"{split}.npy"]
        expected = np.load(standin / "out-reference" / f"{split}.npy")
        for c, count in enumerate(manifest["class_counts"][split]):
            np.testing.assert_array_equal(images[c, :count], expected[c, :count])
    short = manifest["class_counts"]["test"][1]
    assert short == (SHORT[2] if kind == "ilsvrc_tar" else PER_CLASS)
    assert manifest["classes"] == CLASSES == reference["classes"]


def test_a_truncated_tar_is_refused_and_leaves_no_output(standin, tmp_path):
    data = (standin / "ILSVRC2012_img_train.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(MiniImageNetError, match="truncated"):
        prepare(standin, "ilsvrc_tar", "out-cut", source=tmp_path / "cut.tar")
    assert not (standin / "out-cut").exists()


def test_a_tar_whose_ranges_hold_no_jpeg_is_not_the_ilsvrc_tar(standin, tmp_path):
    size = (standin / "ILSVRC2012_img_train.tar").stat().st_size
    (tmp_path / "zeros.tar").write_bytes(bytes(size))
    with pytest.raises(MiniImageNetError, match="is not a JPEG"):
        prepare(standin, "ilsvrc_tar", "out-zeros", source=tmp_path / "zeros.tar")


def test_a_ravi_folder_missing_an_image_names_it(standin, tmp_path):
    folder = tmp_path / "ravi"
    folder.mkdir()
    for p in sorted((standin / "ravi").iterdir())[1:]:
        (folder / p.name).write_bytes(p.read_bytes())
    with pytest.raises(MiniImageNetError, match="n0100000100000000.jpg"):
        prepare(standin, "ravi_folder", "out-missing", source=folder)


def copy_caches(standin: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in (standin / "caches").iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_a_pickle_cache_with_the_wrong_checksum_is_not_unpickled(standin, tmp_path):
    with pytest.raises(MiniImageNetError, match="sha256"):
        prepare(standin, "pickle_cache", "out-sum", sha256={"train": "0" * 64})
    good = hashlib.sha256((standin / "caches" / "mini-imagenet-cache-train.pkl").read_bytes()).hexdigest()
    prepare(standin, "pickle_cache", "out-sum-ok", sha256={"train": good})


def test_an_html_page_instead_of_a_pickle_says_so(standin, tmp_path):
    caches = copy_caches(standin, tmp_path / "caches")
    (caches / "mini-imagenet-cache-val.pkl").write_text("<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(MiniImageNetError, match="HTML page"):
        prepare(standin, "pickle_cache", "out-html", source=caches)
    assert not (standin / "out-html").exists()


class RunsCode:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_that_would_run_code_is_refused_before_running_it(standin, tmp_path):
    caches = copy_caches(standin, tmp_path / "caches")
    sentinel = tmp_path / "pwned"
    with (caches / "mini-imagenet-cache-test.pkl").open("wb") as f:
        pickle.dump({"image_data": RunsCode(str(sentinel)), "class_dict": {}}, f)
    with pytest.raises(MiniImageNetError, match="refusing to load"):
        prepare(standin, "pickle_cache", "out-evil", source=caches)
    assert not sentinel.exists()


def test_a_cache_class_with_the_wrong_number_of_images_is_named(standin, tmp_path):
    caches = copy_caches(standin, tmp_path / "caches")
    path = caches / "mini-imagenet-cache-val.pkl"
    data = pickle.loads(path.read_bytes())
    data["class_dict"]["n01000003"] = data["class_dict"]["n01000003"][:-1]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(MiniImageNetError, match="n01000003 has 3 images, expected 4"):
        prepare(standin, "pickle_cache", "out-count", source=caches)


def test_a_modified_split_file_is_refused(standin, tmp_path):
    ref = tmp_path / "reference"
    for p in (standin / "reference").rglob("*"):
        if p.is_file():
            (ref / p.relative_to(standin / "reference")).parent.mkdir(parents=True, exist_ok=True)
            (ref / p.relative_to(standin / "reference")).write_bytes(p.read_bytes())
    with (ref / "ravi-split" / "val.csv").open("a") as f:
        f.write("n0100000300000009.jpg,n01000003\n")
    with pytest.raises(MiniImageNetError, match="val.csv does not match"):
        prepare_miniimagenet("ravi_folder", standin / "ravi", tmp_path / "out", reference=ref)


def test_the_manifest_records_source_counts_and_checksums(standin):
    returned = prepare(standin, "ilsvrc_tar", "out-manifest")
    manifest = json.loads((standin / "out-manifest" / "manifest.json").read_text())
    assert manifest == returned
    assert manifest["source"] == "ilsvrc_tar" and manifest["split_sizes"] == {"train": 2, "val": 1, "test": 2}
    assert manifest["class_counts"]["test"] == [PER_CLASS, SHORT[2]]
    assert set(manifest["sha256"]) == {"train.npy", "val.npy", "test.npy"}


class RangeServer:
    """A local HTTP server for one file that honours Range requests (or ignores them)."""

    def __init__(self, path: Path, honour_ranges: bool = True):
        import http.server
        import threading

        data = path.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                spec = self.headers.get("Range", "")
                if honour_ranges and spec.startswith("bytes="):
                    first, last = (int(v) for v in spec[6:].split("-"))
                    body, status = data[first:last + 1], 206
                else:
                    body, status = data, 200
                self.send_response(status)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ILSVRC2012_img_train.tar"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_a_url_source_fetches_each_image_with_a_range_request(standin):
    server = RangeServer(standin / "ILSVRC2012_img_train.tar")
    try:
        prepare(standin, "ilsvrc_tar", "out-http", source=server.url, timeout=10)
    finally:
        server.close()
    local = prepare(standin, "ilsvrc_tar", "out-local")
    for split in CLASSES:
        assert (standin / "out-http" / f"{split}.npy").read_bytes() == (standin / "out-local" / f"{split}.npy").read_bytes()
    assert local["class_counts"]["test"] == [PER_CLASS, SHORT[2]]


def test_a_server_that_ignores_range_requests_is_a_clear_error(standin):
    server = RangeServer(standin / "ILSVRC2012_img_train.tar", honour_ranges=False)
    try:
        with pytest.raises(MiniImageNetError, match="ignored the range request"):
            prepare(standin, "ilsvrc_tar", "out-norange", source=server.url, timeout=10)
    finally:
        server.close()
    assert not (standin / "out-norange").exists()


def test_a_prepared_split_loads_as_rgb_with_the_true_class_sizes(standin):
    from gbml.data.prepared import load_split
    from gbml.data.tasks import EpisodeSampler

    prepare(standin, "ilsvrc_tar", "out-load")
    train, test = load_split(standin / "out-load", "train"), load_split(standin / "out-load", "test")
    assert train.images.shape == (2, PER_CLASS, 3, IMAGE_SIZE, IMAGE_SIZE) and train.counts is None
    assert test.counts.tolist() == [PER_CLASS, SHORT[2]]
    episode = EpisodeSampler(test.images, 2, 1, 2, seed=0, counts=test.counts).sample()
    assert episode.support_x.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert episode.query_x.flatten(1).amax(1).min() > 0    # padding (all zeros) is never drawn


def test_gbml_prepare_reads_the_source_from_params_and_says_when_there_is_none(standin, tmp_path, monkeypatch, capsys):
    import yaml

    from gbml.cli import main
    from gbml.data.prepared import load_split

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.delenv("GBML_MINIIMAGENET_SOURCE", raising=False)
    monkeypatch.delenv("GBML_MINIIMAGENET_PATH", raising=False)
    # No source: the stage still succeeds (the default pipeline must), leaving a manifest that says why.
    assert main(["--root", str(tmp_path), "prepare", "--dataset", "miniimagenet"]) == 0
    assert "no Mini-ImageNet source configured" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"miniimagenet was not prepared \(no Mini-ImageNet source configured\): set data"):
        load_split(tmp_path / "data" / "prepared" / "miniimagenet", "train")

    params["data"]["miniimagenet"].update(source="pickle_cache", path=str(standin / "caches"),
                                          splits=str(standin / "reference"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--root", str(tmp_path), "prepare", "--dataset", "miniimagenet"]) == 0
    manifest = json.loads((tmp_path / "data" / "prepared" / "miniimagenet" / "manifest.json").read_text())
    assert manifest["source"] == "pickle_cache" and manifest["classes"] == CLASSES


def test_the_mini_imagenet_model_is_maml_s_conv4_with_32_filters_and_max_pooling():
    import torch
    import yaml

    from gbml.factory import build_model

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    model = build_model(params["model"]["miniimagenet"], ways=5, image_shape=(3, IMAGE_SIZE, IMAGE_SIZE))
    assert model(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, 5)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32] * 4 and convs[0].in_channels == 3
    assert model.classifier.in_features == 32 * 5 * 5      # 84 -> 42 -> 21 -> 10 -> 5
