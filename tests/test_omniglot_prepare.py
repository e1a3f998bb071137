"""Preparing the real (mirrored) Omniglot: all 1,623 characters, seeded explicit splits of the
configured sizes, greyscale-then-resize, rotations only where configured, verified loading.

The data is prepared twice per session, with the two published protocols and the same seed:
Reptile's 1200/0/423 (rotating train) and MAML's 1100/100/423 (rotating train and val)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gbml.data.omniglot import (NUM_CHARACTERS, RESAMPLE, character_dirs, load_character, load_image,
                                prepare_omniglot, resample_filter, split_classes)
from gbml.data.prepared import load_split
from gbml.errors import Fix

def manifest(prepared: Path) -> dict:
    return json.loads((prepared / "manifest.json").read_text())


def test_all_1623_characters_of_both_sets_are_pooled_into_disjoint_splits(reptile_dir):
    m = manifest(reptile_dir)
    assert m["source"] == {"images_background": 964, "images_evaluation": 659,
                           "characters": 1623, "images": 32460}
    names = [c for split in ("train", "val", "test") for c in m["classes"][split]]
    assert len(names) == len(set(names)) == NUM_CHARACTERS
    assert "images_background/Alphabet_of_the_Magi/character01" in names
    assert sorted(p.name for p in reptile_dir.iterdir()) == ["manifest.json", "test.npy", "train.npy", "val.npy"]


@pytest.mark.parametrize("fixture, sizes", [("reptile_dir", (1200, 0, 423)), ("maml_dir", (1100, 100, 423))])
def test_split_sizes_are_as_configured(request, fixture, sizes):
    prepared = request.getfixturevalue(fixture)
    m = manifest(prepared)
    assert tuple(m["split_sizes"].values()) == sizes
    for split, n in zip(("train", "val", "test"), sizes):
        array = np.load(prepared / f"{split}.npy")
        assert array.dtype == np.uint8 and array.shape == (n, 20, 28, 28)
        assert len(m["classes"][split]) == n


@pytest.mark.parametrize("fixture, loaded", [("reptile_dir", (4800, 0, 423)), ("maml_dir", (4400, 400, 423))])
def test_rotations_are_extra_classes_only_in_the_configured_splits(request, fixture, loaded):
    prepared = request.getfixturevalue(fixture)
    for split, n in zip(("train", "val", "test"), loaded):
        images = load_split(prepared, split).images
        assert images.dtype == torch.uint8 and tuple(images.shape) == (n, 20, 1, 28, 28)


def test_rotated_class_4c_plus_k_is_class_c_turned_k_quarter_turns(reptile_dir):
    stored = torch.from_numpy(np.load(reptile_dir / "train.npy"))
    loaded = load_split(reptile_dir, "train")
    for c in (0, 17, 1199):
        for k in range(4):
            assert torch.equal(loaded.images[4 * c + k, :, 0], torch.rot90(stored[c], k, dims=(-2, -1)))


def test_the_same_seed_gives_the_same_split_and_the_same_bytes(reptile_dir, maml_dir):
    reptile, maml = manifest(reptile_dir), manifest(maml_dir)
    # One seeded permutation, cut at different places: MAML's train + val is Reptile's train.
    assert maml["classes"]["test"] == reptile["classes"]["test"]
    assert sorted(maml["classes"]["train"] + maml["classes"]["val"]) == reptile["classes"]["train"]
    assert maml["sha256"]["test.npy"] == reptile["sha256"]["test.npy"]
    idx = split_classes(NUM_CHARACTERS, 1200, 0, seed=0)
    names = sorted(reptile["classes"]["train"] + reptile["classes"]["test"])
    assert [names[i] for i in idx["test"]] == reptile["classes"]["test"]


def test_another_seed_gives_another_split():
    a, b = split_classes(NUM_CHARACTERS, 1200, 0, seed=0), split_classes(NUM_CHARACTERS, 1200, 0, seed=1)
    assert not np.array_equal(a["test"], b["test"])
    assert all(np.array_equal(a[s], split_classes(NUM_CHARACTERS, 1200, 0, seed=0)[s]) for s in a)


def test_greyscale_before_resize_yields_intermediate_grey_levels(reptile_dir, omniglot_raw):
    train = np.load(reptile_dir / "train.npy")
    grey = (train > 0) & (train < 255)
    assert grey.mean() > 0.02, "lanczos on a greyscale image smooths stroke edges"
    # Why the conversion comes first: Pillow resizes a 1-bit image with nearest-neighbour.
    png = sorted((omniglot_raw / manifest(reptile_dir)["classes"]["train"][0]).glob("*.png"))[0]
    with Image.open(png) as img:
        assert img.mode == "1"
        direct = np.asarray(img.resize((28, 28), Image.Resampling.LANCZOS).convert("L"))
    assert set(np.unique(direct)) <= {0, 255}
    assert np.array_equal(train[0, 0], load_image(png, 28, Image.Resampling.LANCZOS))


def test_a_corrupted_or_missing_array_is_detected_at_load(reptile_dir, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(reptile_dir, copy)
    data = bytearray((copy / "test.npy").read_bytes())
    data[-1] ^= 0x01  # one pixel off by one: still a valid .npy, no longer the prepared data
    (copy / "test.npy").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"test\.npy does not match the sha256.*prepare the dataset again") as raised:
        load_split(copy, "test")
    assert raised.value.fix == Fix("prepare", "omniglot", force=True)
    (copy / "train.npy").unlink()
    with pytest.raises(ValueError, match=r"cannot read .*train\.npy.*prepare the dataset again") as raised:
        load_split(copy, "train")
    assert raised.value.fix == Fix("prepare", "omniglot", force=True)


def test_loading_the_rotated_train_split_is_fast(reptile_dir):
    start = time.perf_counter()
    load_split(reptile_dir, "train")
    assert time.perf_counter() - start < 5.0  # ~0.3 s measured; a regression guard, not a benchmark


# --- validation, before any image is read ------------------------------------------------------

def test_an_unknown_resample_filter_is_refused_with_the_allowed_names(tmp_path):
    with pytest.raises(ValueError, match="unknown resample filter 'antialias'; allowed: " + ", ".join(RESAMPLE)):
        prepare_omniglot(tmp_path, tmp_path / "out", resample="antialias")
    assert resample_filter("bicubic") is Image.Resampling.BICUBIC


@pytest.mark.parametrize("num_train, num_val", [(1200, 423), (1623, 0), (0, 100)])
def test_split_sizes_must_leave_test_classes(tmp_path, num_train, num_val):
    with pytest.raises(ValueError, match="num_train \\+ num_val < 1623"):
        prepare_omniglot(tmp_path, tmp_path / "out", num_train=num_train, num_val=num_val)


def test_rotate_splits_names_known_splits(tmp_path):
    with pytest.raises(ValueError, match="rotate_splits may only name train, val, test"):
        prepare_omniglot(tmp_path, tmp_path / "out", rotate_splits=("training",))


def test_an_incomplete_raw_tree_is_refused(tmp_path):
    (tmp_path / "images_background" / "Alphabet" / "character01").mkdir(parents=True)
    with pytest.raises(ValueError, match="incomplete.*expected 1623.*fetch it again") as raised:
        character_dirs(tmp_path)
    assert raised.value.fix == Fix("fetch", "omniglot", force=True)


def test_a_character_without_20_drawings_is_refused(tmp_path):
    for i in range(19):
        Image.new("1", (105, 105), 1).save(tmp_path / f"0001_{i:02d}.png")
    with pytest.raises(ValueError, match="holds 19 PNGs, expected 20"):
        load_character(tmp_path, 28, Image.Resampling.LANCZOS)
