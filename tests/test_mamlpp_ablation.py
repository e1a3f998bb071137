"""Specification of the MAML++ instability and ablation study (Antoniou et al. 2019, Figure 1 and
Table 1's ablation rows): what counts as unstable, what the summary compares, and that a unit is
a real training run of its params section, scored on the test split."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gbml.errors import ConfigError
from gbml.report.studies import mamlpp_ablation_section
from gbml.report.tables import load_published
from gbml.studies.config import MamlppAblationConfig
from gbml.studies.mamlpp_ablation import max_rise, measure_unit, run_summary, summarise, summary, unit_names
from gbml.studies.registry import Workspace

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "src" / "gbml" / "reference" / "published_results.csv"


def test_the_rise_is_the_largest_climb_above_the_running_minimum():
    assert max_rise(np.array([3.0, 2.0, 2.5, 1.0, 1.8, 1.2])) == pytest.approx(0.8)   # 1.8 - 1.0
    assert max_rise(np.array([3.0, 2.0, 1.0])) == 0.0                                 # never rises
    assert max_rise(np.array([2.0, np.nan, 2.4])) == pytest.approx(0.4)               # NaN points ignored


def test_a_run_is_unstable_when_its_loss_climbs_past_rise_or_a_step_was_not_finite():
    cfg = MamlppAblationConfig(rise=0.5)
    history = [{"step": i, "train_loss": v} for i, v in enumerate([2.0, 1.0, 1.4, 0.9])]
    calm = run_summary(history, {"nonfinite_skipped": 0}, np.array([1.0, 0.0]), cfg)
    assert not calm["unstable"] and calm["max_rise"] == pytest.approx(0.4) and calm["test_accuracy"] == 0.5
    assert run_summary(history, {"nonfinite_skipped": 2}, np.array([1.0]), cfg)["unstable"]
    spiky = history + [{"step": 9, "train_loss": 1.6}]
    assert run_summary(spiky, {}, np.array([1.0]), cfg)["unstable"]


def test_the_summary_pairs_every_arm_with_the_baseline_by_seed_and_task():
    cfg = MamlppAblationConfig(arms=("maml_strided", "maml_lslr", "mamlpp_strided"), seeds=(0, 1))
    rng = np.random.default_rng(0)
    tests = {(a, s): rng.integers(0, 2, 50).astype(float) for a in cfg.arms for s in cfg.seeds}
    runs = {k: {"test_accuracy": v.mean(), "unstable": k == ("maml_strided", 1), "final_train_loss": 1.0}
            for k, v in tests.items()}
    out = summary(runs, tests, cfg)
    diffs = np.concatenate([tests[("maml_lslr", s)] - tests[("maml_strided", s)] for s in cfg.seeds])
    d = out["differences"]["maml_lslr-vs-maml_strided"]
    assert d["change"] == pytest.approx(diffs.mean())
    assert d["ci95"] == pytest.approx(1.959964 * diffs.std(ddof=1) / math.sqrt(diffs.size), rel=1e-5)
    assert "maml_strided-vs-maml_strided" not in out["differences"]
    base = out["arms"]["maml_strided"]
    assert base["unstable_seeds"] == 1 and out["arms"]["mamlpp_strided"]["unstable_seeds"] == 0
    seed_means = [tests[("maml_strided", s)].mean() for s in cfg.seeds]
    assert base["std_over_seeds"] == pytest.approx(np.std(seed_means, ddof=1))


def test_the_baseline_and_the_fixed_arm_must_be_arms():
    with pytest.raises(ValueError, match="must include the baseline 'maml'"):
        MamlppAblationConfig(arms=("maml_msl", "mamlpp_strided"), baseline="maml")
    with pytest.raises(ValueError, match="must not repeat"):
        MamlppAblationConfig(seeds=(0, 0))


def test_units_and_the_not_run_profile(tmp_path):
    cfg = MamlppAblationConfig(arms=("maml_strided", "mamlpp_strided"), seeds=(0, 2))
    assert unit_names({}, cfg) == ["maml_strided-seed0", "maml_strided-seed2", "mamlpp_strided-seed0",
                                   "mamlpp_strided-seed2"]
    metrics = summarise({"profile": "cpu"}, MamlppAblationConfig(seeds=()), tmp_path / "m", tmp_path / "out")
    assert metrics["ran"] is False and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json"]
    text = mamlpp_ablation_section(tmp_path / "out", tmp_path, load_published(PUBLISHED))
    assert "not run in this profile" in text and "MAML + LSLR 95.77 ± 0.38" in text   # the claim, from the CSV


def tiny_params() -> dict:
    """The studies profile's arms, shrunk: 4 meta-iterations in epochs of 2, a 2-point curve."""
    params = yaml.safe_load((REPO / "profiles" / "studies.yaml").read_text())
    for arm in ("maml_strided", "mamlpp_strided"):
        params[arm].update(meta_iters=4, iters_per_epoch=2, meta_batch=2, inner_steps=2, eval_inner_steps=2,
                           msl_epochs=1, first_order_epochs=1, ensemble_top_n=1)
    params["training"].update(curve_tasks=2, threads=1, checkpoint_every=0)
    params["studies"]["mamlpp_ablation"].update(arms=["maml_strided", "mamlpp_strided"], seeds=[0, 1],
                                                log_every=1, eval_tasks=6)
    return params


def test_a_unit_trains_its_section_and_scores_it_and_the_summary_reads_what_was_measured(maml_dir, tmp_path):
    params = tiny_params()
    cfg = MamlppAblationConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in params["studies"]["mamlpp_ablation"].items()})
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "omniglot").symlink_to(maml_dir)
    workspace, measured = Workspace(tmp_path / "data", tmp_path / "runs"), tmp_path / "studies"
    for unit in ({"arm": a, "seed": s} for a in cfg.arms for s in cfg.seeds):
        measure_unit(params, cfg, unit, workspace, measured)
    run = measured / "maml_strided-seed0" / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"]["inner_steps"] == 2 and config["algorithm"]["lslr"] is False   # the section's own
    assert config["training"]["nonfinite"] == "skip"   # divergence is a result here, not an error
    history = json.loads((run / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2, 3, 4]   # a loss point every log_every iterations
    per_task = pd.read_csv(measured / "maml_strided-seed0" / "test" / "per_task.csv")
    assert len(per_task) == 6 and set(per_task["mode"]) == {"transductive"}

    out = tmp_path / "out"
    metrics = summarise(params, cfg, measured, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["curves.csv", "final.csv", "instability.png", "ablation.png", "metrics.json"])
    assert metrics["runs"]["maml_strided-seed0"]["test_accuracy"] == pytest.approx(per_task["accuracy"].mean())
    assert len(pd.read_csv(out / "curves.csv")) == 4 * len(cfg.arms) * len(cfg.seeds)
    text = mamlpp_ablation_section(out, tmp_path, load_published(PUBLISHED))
    assert "| MAML++ (`mamlpp_strided`) |" in text and "Unstable seeds" in text


def test_an_arm_not_in_the_study_is_refused(tmp_path):
    cfg = MamlppAblationConfig(arms=("maml_strided", "mamlpp_strided"), seeds=(0,))
    with pytest.raises(ConfigError, match="does not include 'maml_lslr'"):
        measure_unit({}, cfg, {"arm": "maml_lslr", "seed": 0}, Workspace(tmp_path, tmp_path), tmp_path)
