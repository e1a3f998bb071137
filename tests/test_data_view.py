"""An algorithm's data_view: one prepared Omniglot read the way each reference read it.

Finn et al. invert the pixels, rotate every split's classes and cut 1100 / 100 training and
validation characters; Nichol et al. train on all 1200 with no validation split; MAML++ reads the
data as prepared. The view is applied at load time, so the prepared arrays (and every run without
a view) stay exactly as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gbml.config import RunSpec, load_params, resolved_run_config
from gbml.data.prepared import load_split, split_size, write_prepared
from gbml.errors import DataError
from gbml.report.protocols import run_values
from gbml.train import curve_split_name

REPO = Path(__file__).resolve().parents[1]
SIZES = {"train": 6, "val": 2, "test": 3}


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A small prepared Omniglot: class c's pixels all start at 10 * c (train 0-5, val 6-7, test
    8-10), a different value per example, so every class and example is recognisable."""
    rng = np.random.default_rng(0)
    arrays, first = {}, 0
    for split, n in SIZES.items():
        base = (10 * np.arange(first, first + n))[:, None, None, None] + np.arange(4)[None, :, None, None]
        arrays[split] = (base + rng.integers(0, 2, size=(n, 4, 5, 5))).astype(np.uint8)
        first += n
    manifest = {"dataset": "omniglot", "split_sizes": SIZES, "rotate_splits": ["train"]}
    write_prepared(tmp_path / "omniglot", arrays, manifest)
    return tmp_path / "omniglot"


def first_pixels(split) -> list[int]:
    return [int(c[0, 0].min()) // 10 * 10 for c in split.images]


def test_without_a_view_the_data_is_read_as_prepared(prepared):
    assert torch.equal(load_split(prepared, "train", {}).images, load_split(prepared, "train").images)
    assert load_split(prepared, "train").num_classes == 4 * 6          # the manifest rotates train
    assert load_split(prepared, "val").num_classes == 2


def test_num_val_cuts_training_and_validation_characters_again_in_their_prepared_order(prepared):
    view = {"num_val": 3, "rotate_splits": []}
    train, val = load_split(prepared, "train", view), load_split(prepared, "val", view)
    assert first_pixels(train) == [0, 10, 20, 30, 40]
    assert first_pixels(val) == [50, 60, 70]
    assert first_pixels(load_split(prepared, "test", view)) == [80, 90, 100]
    assert (split_size(prepared, "train", view), split_size(prepared, "val", view)) == (5, 3)


def test_num_val_zero_trains_on_every_non_test_character_and_curves_fall_back_to_test(prepared):
    view = {"num_val": 0, "rotate_splits": []}
    assert load_split(prepared, "train", view).num_classes == 8
    assert load_split(prepared, "val", view).num_classes == 0
    assert curve_split_name(prepared, view) == "test" and curve_split_name(prepared) == "val"


def test_invert_flips_every_pixel(prepared):
    plain, inverted = load_split(prepared, "test"), load_split(prepared, "test", {"invert": True})
    assert torch.equal(inverted.images, 255 - plain.images)


def test_rotate_splits_replaces_the_manifests_list(prepared):
    view = {"rotate_splits": ["test"]}
    assert load_split(prepared, "train", view).num_classes == 6
    test = load_split(prepared, "test", view)
    assert test.num_classes == 4 * 3
    plain = load_split(prepared, "test").images
    assert torch.equal(test.images[4 * 2 + 1], torch.rot90(plain[2], 1, dims=(-2, -1)))


def test_a_view_that_leaves_no_training_character_is_a_clear_error(prepared):
    with pytest.raises(DataError, match="num_val=8.*8 training and validation characters"):
        load_split(prepared, "train", {"num_val": 8})


def test_only_a_configured_view_enters_a_runs_config():
    params = load_params(REPO / "params.yaml")
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    assert "data_view" not in resolved_run_config(params, spec)     # the default runs' configs are unchanged
    params["maml"]["data_view"] = {"omniglot": {"invert": True, "num_val": 100}}
    assert resolved_run_config(params, spec)["data_view"] == {"invert": True, "num_val": 100}


def test_the_paper_profile_reads_omniglot_as_each_reference_did():
    params = load_params(REPO / "profiles" / "paper.yaml")
    values = {a: run_values(params, RunSpec(a, "omniglot", 5, 1, 0)) for a in ("maml", "anil", "reptile", "mamlpp")}
    assert values["maml"]["data.split"] == values["anil"]["data.split"] == "1100/100/423"        # Finn et al.
    assert values["maml"]["data.inverted"] and values["maml"]["data.rotated_test"]
    assert (values["reptile"]["data.split"], values["reptile"]["data.inverted"]) == ("1200/0/423", False)
    assert (values["mamlpp"]["data.split"], values["mamlpp"]["data.rotated_test"]) == ("1150/50/423", False)


def test_the_schema_refuses_a_misspelt_view_and_a_view_of_mini_imagenet():
    from gbml.config import ConfigError
    from gbml.validation import validate_params
    params = load_params(REPO / "params.yaml")
    params["maml"]["data_view"] = {"omniglot": {"inverted": True}}
    with pytest.raises(ConfigError, match="maml.data_view.omniglot.inverted: unknown key"):
        validate_params(params)
    params["maml"]["data_view"] = {"miniimagenet": {"invert": True}}
    with pytest.raises(ConfigError, match="maml.data_view.miniimagenet: unknown key"):
        validate_params(params)
