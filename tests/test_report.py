"""The report's paper tables and figures, on hand-made summaries (the e2e test builds them from a
real MLflow store)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gbml.report.figures import accuracy_vs_paper, lslr_heatmaps, transduction_comparison
from gbml.report.paper_tables import (CI_OVER_TASKS, PAPER_TABLES, STD_OVER_SEEDS, cell_markdown,
                                      table_cells, table_markdown)
from gbml.report.tables import load_published

PUBLISHED = Path(__file__).resolve().parents[1] / "src" / "gbml" / "reference" / "published_results.csv"
REPO = Path(__file__).resolve().parents[1]
TABLES = {t.key: t for t in PAPER_TABLES}


def cell_row(algorithm, mode, accuracy, std, ci, seeds=2, dataset="omniglot", ways=5, shots=1):
    return {"algorithm": algorithm, "dataset": dataset, "ways": ways, "shots": shots, "mode": mode,
            "seeds": seeds, "accuracy_pct": accuracy, "std_over_seeds_pct": std,
            "mean_ci95_over_tasks_pct": ci, "num_tasks": 400, "meta_iters": 100,
            "paper_accuracy_pct": math.nan, "paper_plus_minus_pct": math.nan,
            "mlflow_run_ids": f"{algorithm}{mode}0 {algorithm}{mode}1"}


@pytest.fixture
def pub():
    return load_published(PUBLISHED)


def cell(cells, row, ways=5, shots=1, dataset="omniglot"):
    hit = cells[(cells.row == row) & (cells.ways == ways) & (cells.shots == shots) & (cells.dataset == dataset)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_reptile_table1_cell_sets_ours_beside_the_paper_with_the_papers_kind_of_interval(pub):
    summary = pd.DataFrame([cell_row("maml", "transductive", 97.0, 0.3, 2.0),
                            cell_row("reptile", "transductive", 97.0, 0.5, 2.0)])
    cells = table_cells(TABLES["reptile_table1"], summary, pub)

    maml = cell(cells, "MAML + Transduction")   # Finn et al.: 95% CI over tasks
    assert maml["status"] == "run" and maml["paper_pct"] == 98.7
    assert maml["ours_plus_minus"] == CI_OVER_TASKS and maml["ours_plus_minus_pct"] == 2.0
    assert maml["difference_pct"] == pytest.approx(-1.7) and maml["paper_within_ours"]

    reptile = cell(cells, "Reptile + Transduction")   # Nichol et al.: std over 3 seeds
    assert reptile["ours_plus_minus"] == STD_OVER_SEEDS and reptile["ours_plus_minus_pct"] == 0.5
    assert reptile["paper_pct"] == 97.68 and not reptile["paper_within_ours"]   # |97.0 - 97.68| > 0.5


def test_a_std_over_one_seed_is_replaced_by_the_ci_over_tasks(pub):
    summary = pd.DataFrame([cell_row("reptile", "non_transductive", 95.0, math.nan, 1.0, seeds=1)])
    c = cell(table_cells(TABLES["reptile_table1"], summary, pub), "Reptile")
    assert c["ours_plus_minus"] == CI_OVER_TASKS and c["ours_plus_minus_pct"] == 1.0
    assert c["paper_within_ours"]   # 95.39 within 95.0 ± 1.0


def test_cells_outside_the_grid_are_not_run_and_never_left_out(pub):
    summary = pd.DataFrame([cell_row("maml", "transductive", 90.0, 0.3, 2.0)])
    for table in PAPER_TABLES:
        cells = table_cells(table, summary, pub)
        assert len(cells) == len(table.rows) * len(table.columns)
        markdown = table_markdown(table, cells)
        for row in table.rows:
            assert f"| {row.label} |" in markdown
        for col in table.columns:
            assert col.label in markdown
    cells = table_cells(TABLES["reptile_table1"], summary, pub)
    not_run = cells[cells.status == "not run"]
    assert len(not_run) == 15   # 4 rows x 4 settings, one run
    assert cell_markdown(cell(cells, "Reptile", 20, 5)) == "not run · paper 96.65 ± 0.33"


def test_ablation_rows_come_from_their_variant_runs_and_maml_pp_falls_back_to_its_headline_variant(pub):
    summary = pd.DataFrame([cell_row("maml", "transductive", 90.0, 0.3, 2.0, ways=20),
                            cell_row("mamlpp", "transductive", 50.0, 0.3, 2.0, dataset="miniimagenet")])
    cells = table_cells(TABLES["mamlpp"], summary, pub)
    assert cell(cells, "MAML + MSL", 20)["status"] == "not run"      # our maml run is not MAML + MSL
    assert cell(cells, "MAML + MSL", 20)["paper_pct"] == 91.53
    assert cell(cells, "MAML (local replication)", 20)["ours_pct"] == 90.0
    mini = cell(cells, "MAML++", 5, 1, "miniimagenet")
    assert mini["paper_pct"] == 52.40 and mini["ours_pct"] == 50.0   # "5 inner steps" is the headline
    assert cell_markdown(cell(cells, "MAML + MSL", 20, 5)) == "—"     # the paper has no such cell

    with_ablation = pd.concat([summary, pd.DataFrame([cell_row("maml_msl", "transductive", 91.0, 0.6, 1.0, ways=20)])])
    msl = cell(table_cells(TABLES["mamlpp"], with_ablation, pub), "MAML + MSL", 20)
    assert msl["status"] == "run" and msl["ours_pct"] == 91.0 and msl["paper_within_ours"]   # 91.53 within 91 ± 0.6 (std over seeds)


def assert_png(path: Path) -> None:
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(path) as image:
        image.verify()


def test_figures_are_valid_pngs_also_when_there_is_nothing_to_show(tmp_path):
    rows = [cell_row(a, m, 90.0 + i, 0.5, 1.2) for i, (a, m) in enumerate(
        [("maml", "transductive"), ("maml", "non_transductive"), ("reptile", "transductive")])]
    summary = pd.DataFrame(rows)
    summary.loc[0, "paper_accuracy_pct"], summary.loc[0, "paper_plus_minus_pct"] = 98.7, 0.4
    figures = [
        accuracy_vs_paper(summary, tmp_path / "a.png"),
        accuracy_vs_paper(summary.iloc[1:], tmp_path / "a_empty.png"),
        transduction_comparison(summary, ["transductive", "non_transductive"], tmp_path / "t.png"),
        lslr_heatmaps({"omniglot 5-way 1-shot (2 seeds)": {"conv.weight": np.array([0.1, 0.2]),
                                                            "head.weight": np.array([0.3, 0.05])}},
                      tmp_path / "l.png"),
        lslr_heatmaps({}, tmp_path / "l_empty.png"),
    ]
    for path in figures:
        assert_png(path)
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_report_that_fails_halfway_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    from gbml.report import build

    root, out = tmp_path, tmp_path / "reports"
    (root / "pub.csv").write_text(PUBLISHED.read_text())
    (out / "tables").mkdir(parents=True)
    (out / "README.md").write_text("previous report")
    (out / "tables" / "reptile_table1.csv").write_text("previous table")
    per_run = pd.DataFrame([{"algorithm": "maml", "dataset": "omniglot", "ways": 5, "shots": 1, "seed": 0,
                             "mode": "transductive", "accuracy_pct": 90.0, "ci95_pct": 1.0, "num_tasks": 10,
                             "meta_iters": 5, "mlflow_run_id": "r0", "mlflow_link": "http://x/r0"}])
    monkeypatch.setattr(build, "collect", lambda *a: build.Tracked(per_runs=[per_run]))

    def broken(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr(build, "write_figures", broken)
    params = {"evaluate": {"modes": ["transductive"]}, "report": {"published": "pub.csv"}}
    with pytest.raises(RuntimeError, match="disk full"):
        build.build_report(params, root, out)
    assert (out / "README.md").read_text() == "previous report"
    assert (out / "tables" / "reptile_table1.csv").read_text() == "previous table"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "tables"]   # no staging left behind


def test_publishing_replaces_files_and_directories_in_place(tmp_path):
    from gbml.report.build import publish

    out, staging = tmp_path / "reports", tmp_path / "reports" / ".report-x"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_bytes(b"old")
    (out / "sine").mkdir()                              # another stage's output: untouched
    (staging / "figures").mkdir(parents=True)
    (staging / "figures" / "new.png").write_bytes(b"new")
    (staging / "README.md").write_text("new report")
    publish(staging, out)
    assert [p.name for p in (out / "figures").iterdir()] == ["new.png"]
    assert (out / "README.md").read_text() == "new report" and (out / "sine").is_dir()


def test_a_dataset_without_a_source_says_so_in_every_cell_and_how_to_add_one(pub):
    summary = pd.DataFrame([cell_row("maml", "transductive", 90.0, 0.3, 2.0)])
    reason = {"miniimagenet": "no Mini-ImageNet source configured"}
    cells = table_cells(TABLES["reptile_table2"], summary, pub, reason)
    assert (cells.status == "not run: no Mini-ImageNet source configured").all()
    markdown = table_markdown(TABLES["reptile_table2"], cells, how_to={"miniimagenet": "Set data.miniimagenet."})
    assert "**Mini-ImageNet: not run: no Mini-ImageNet source configured.** Set data.miniimagenet." in markdown
    assert "not run · paper 48.70 ± 1.84" in markdown
    omniglot = table_cells(TABLES["reptile_table1"], summary, pub, reason)
    assert set(omniglot.status) == {"run", "not run"}     # a configured dataset's missing cells: plain


def test_fidelity_section_summarises_the_committed_ab_results_per_implementation(tmp_path):
    from gbml.report.fidelity import fidelity_section
    fidelity = tmp_path / "reports" / "fidelity"
    fidelity.mkdir(parents=True)
    rows = [("reptile", "reference", s, m, a) for s, a in ((0, 86.0), (1, 88.0))
            for m in ("transductive", "non_transductive")]
    rows += [("reptile", "gbml_reference", 0, "transductive", 87.5),
             ("reptile", "gbml_reference", 0, "non_transductive", 80.0),
             ("mamlpp", "reference", 0, "transductive", 95.0), ("mamlpp", "reference", 0, "non_transductive", 90.0)]
    pd.DataFrame(rows, columns=["study", "side", "seed", "mode", "accuracy"]).to_csv(fidelity / "results.csv",
                                                                                     index=False)
    text = fidelity_section(fidelity, tmp_path / "reports")
    assert "| Reptile against openai/supervised-reptile | reference | 2 | 87.00 ± 1.41 | 87.00 ± 1.41 |" in text
    assert "| Reptile against openai/supervised-reptile | gbml_reference | 1 | 87.50 | 80.00 |" in text  # no spread
    assert "| MAML++ against AntreasAntoniou/HowToTrainYourMAMLPytorch | reference | 1 | 95.00 | 90.00 |" in text
    assert "(fidelity/README.md)" in text


def test_compute_section_states_each_cells_cost_and_which_are_gpu_jobs(tmp_path):
    from gbml.report.compute import compute_section
    compute = tmp_path / "reports" / "compute"
    compute.mkdir(parents=True)
    pd.DataFrame([("anil-omniglot-5w1s", 60000, 32, 0.22, 3.8, 11.4), ("maml-omniglot-20w5s", 60000, 16, 25.6, 429.1, 1287.3)],
                 columns=["cell", "meta_iters", "meta_batch", "s_per_iter", "hours_per_seed", "hours_all_seeds"]
                 ).to_csv(compute / "cells.csv", index=False)
    text = compute_section(compute, tmp_path / "reports")
    assert "| maml-omniglot-20w5s | 60,000 x 16 | 25.600 | 429.1 | 1,287.3 |" in text
    assert "1,299 CPU-hours (54 days)" in text and "1 of 2 cells need more than 12 hours per seed" in text
    assert "(compute/README.md)" in text
    assert "Not measured" in compute_section(tmp_path / "nowhere", tmp_path / "reports")


def test_fidelity_results_from_before_the_per_study_layout_are_reptiles(tmp_path):
    from gbml.report.fidelity import fidelity_section
    fidelity = tmp_path / "reports" / "fidelity"
    fidelity.mkdir(parents=True)
    pd.DataFrame([("reference", 0, "transductive", 86.0)], columns=["side", "seed", "mode", "accuracy"]
                 ).to_csv(fidelity / "results.csv", index=False)
    assert "| Reptile against openai/supervised-reptile | reference | 1 | 86.00 |" in fidelity_section(
        fidelity, tmp_path / "reports")


def test_fidelity_section_says_plainly_when_the_study_has_not_run(tmp_path):
    from gbml.report.fidelity import fidelity_section
    text = fidelity_section(tmp_path / "reports" / "fidelity", tmp_path / "reports")
    assert "Not run" in text and "benchmarks/fidelity/run.py" in text


def test_protocol_tables_compare_each_cell_with_its_reference_and_mark_the_differences():
    from gbml.config import load_params
    from gbml.report.protocols import protocols_section

    params = load_params(REPO / "params.yaml")
    params["grid"].update(algorithms=["maml"], omniglot={"ways": [5, 20], "shots": [1]})
    protocol = {"maml": {"source": "cbfinn/maml@abc", "rows": [
        {"what": "inner steps", "key": "algorithm.inner_steps", "cite": "main.py:1",
         "reference": {"omniglot-5w": 1, "omniglot-20w": 5}},                    # longest prefix wins
        {"what": "meta-batch", "key": "algorithm.meta_batch", "cite": "main.py:2", "reference": 32},
        {"what": "queries", "key": "evaluate.queries", "cite": "main.py:3", "reference": "K"},
        {"what": "pixels inverted", "this": "no", "cite": "d.py:4", "reference": {"omniglot": "yes"}},
        {"what": "Mini-ImageNet only", "key": "model.hidden", "cite": "x", "reference": {"miniimagenet": 32}},
    ]}}
    params["maml"]["settings"] = {"omniglot-20w1s": {"inner_steps": 5}}
    text = protocols_section(params, protocol)
    assert "### maml (cbfinn/maml@abc)" in text
    assert "| inner steps | omniglot-5w1s: 1; omniglot-20w1s: 5 | main.py:1 | omniglot-5w1s: 1; omniglot-20w1s: 5 | = |" in text
    assert f"| meta-batch | 32 | main.py:2 | {params['maml']['meta_batch']} | ≠ |" in text
    assert "| queries | K | main.py:3 | K | = |" in text        # 1 query in 1-shot cells is K
    assert "| pixels inverted | yes | d.py:4 | no | ≠ |" in text
    assert "Mini-ImageNet only" not in text                  # no cell of the grid has a reference value


@pytest.mark.parametrize("profile", ["profiles/paper.yaml", "params.yaml"])
def test_the_shipped_protocols_name_keys_every_run_config_has(profile):
    # params.yaml names none of the later model switches (normalize, ...): their defaults count.
    from gbml.config import grid, load_params
    from gbml.report.protocols import MISSING, load_protocols, reference_value, run_values

    params = load_params(REPO / profile)
    params["grid"]["miniimagenet"] = {"ways": [5], "shots": [1, 5]}
    protocols = load_protocols()
    assert set(protocols) >= {"maml", "fomaml", "anil", "mamlpp", "reptile"}
    for spec in grid(params):
        if spec.algorithm == "pretrain":   # the baseline: no authors' code to compare with
            continue
        keys = run_values(params, spec)
        for row in protocols[spec.algorithm]["rows"]:
            if reference_value(row["reference"], spec.setting, spec.shots) is MISSING:
                continue                                  # the row is about another dataset's cells
            assert "this" in row or row["key"] in keys, (profile, spec, row)
            assert row["cite"], (spec.algorithm, row)



class RunArtifacts:
    """The tracker calls the LSLR figure makes, over ``root/<run_id>/`` standing in for MLflow."""
    def __init__(self, root: Path):
        self.root, self.client = root, self

    def list_artifacts(self, run_id, path):
        folder = self.root / run_id / path
        return [SimpleNamespace(path=f"{path}/{p.name}") for p in folder.iterdir()] if folder.is_dir() else []

    def download_artifact(self, run_id, path, dst):
        return self.root / run_id / path


def test_the_lslr_figure_reads_each_seeds_best_validated_checkpoint(tmp_path):
    """Antoniou et al. show the learned rates per layer and step; each seed gets its own panel,
    from the checkpoint with the best validation accuracy, or the final one when none was kept."""
    from gbml.report.mlflow_runs import lslr_rates

    def save(path, rate):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"inner_lrs": {"conv1.weight": torch.full((3,), rate)}}, path)

    save(tmp_path / "r0" / "checkpoint.pt", 0.1)
    save(tmp_path / "r0" / "ensemble" / "step0000700.pt", 0.7)
    (tmp_path / "r0" / "ensemble" / "members.json").write_text(
        '[{"file": "step0000700.pt", "step": 700, "val_acc": 0.9}, {"file": "step0000800.pt", "step": 800, "val_acc": 0.8}]')
    save(tmp_path / "r1" / "checkpoint.pt", 0.2)
    per_run = pd.DataFrame([{"base_algorithm": "mamlpp", "algorithm": "mamlpp", "dataset": "omniglot", "ways": 5,
                             "shots": 1, "seed": s, "mlflow_run_id": f"r{s}"} for s in (1, 0)])
    rates = lslr_rates(RunArtifacts(tmp_path), per_run)
    assert list(rates) == ["mamlpp, omniglot 5-way 1-shot, seed 0\n(best validation: step 700, 90.0%)",
                           "mamlpp, omniglot 5-way 1-shot, seed 1\n(final checkpoint)"]
    assert [v["conv1.weight"][0] for v in rates.values()] == pytest.approx([0.7, 0.2])


def run_row(name: str) -> dict:
    return {"run_name": name, "mlflow_run_id": f"id-{name}", "train_seconds": 12.0, "train_peak_memory_mb": 700.0,
            "eval_seconds": 3.0, "eval_peak_memory_mb": 900.0}


def test_run_records_take_snakemakes_benchmark_only_when_it_measured_the_current_outputs(tmp_path):
    import os

    from gbml.report.run_records import run_records, run_records_markdown

    per_run = pd.DataFrame([run_row("maml-omniglot-5w1s-seed0"), run_row("reptile-omniglot-5w1s-seed0")])
    bench = tmp_path / "logs" / "benchmarks"
    for step, out in (("train", "runs/{}/run.json"), ("evaluate", "evals/{}/metrics.json")):
        for name in per_run.run_name:
            (tmp_path / out.format(name)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / out.format(name)).write_text("{}")
            (bench / step).mkdir(parents=True, exist_ok=True)
            (bench / step / f"{name}.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n41.5\t0:00:41\t812.3\t2000\n")
    # reptile's training was re-run by DVC after Snakemake benchmarked it: that file measured an older run
    stale = bench / "train" / "reptile-omniglot-5w1s-seed0.tsv"
    os.utime(stale, (1, 1))
    models = {"id-maml-omniglot-5w1s-seed0": ("gbml-e2e-omniglot-maml-5w1s", "3", "http://m/3")}
    records = run_records(per_run, models, bench, tmp_path).set_index("run_name")
    assert records.loc["maml-omniglot-5w1s-seed0", "snakemake_train_s"] == 41.5
    assert records.loc["maml-omniglot-5w1s-seed0", "snakemake_evaluate_max_rss_mb"] == 812.3
    assert math.isnan(records.loc["reptile-omniglot-5w1s-seed0", "snakemake_train_s"])
    links = pd.Series({f"id-{n}": f"http://run/{n}" for n in per_run.run_name})
    table = run_records_markdown(records.reset_index(), links, bench)
    assert "| Snakemake train s |" in table and "[`gbml-e2e-omniglot-maml-5w1s` v3](http://m/3)" in table
    assert "| [reptile-omniglot-5w1s-seed0](http://run/reptile-omniglot-5w1s-seed0) | 12 | 700 | 3 | 900 | — |" in table
    without = run_records_markdown(run_records(per_run, models, None, tmp_path), links, None)
    assert "Snakemake train s" not in without and "not registered" in without
