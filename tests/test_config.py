"""params.yaml: the grid, per-setting overrides, clear errors, and the committed profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import ALGORITHMS, ConfigError, RunSpec, algorithm_config, grid, load_params, resolved_run_config

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_is_the_cpu_profile():
    assert (REPO / "params.yaml").read_text() == (REPO / "profiles" / "cpu.yaml").read_text()


def test_default_grid_is_omniglot_5way_1shot_every_algorithm_two_seeds():
    specs = grid(load_params(REPO / "params.yaml"))
    assert {(s.algorithm, s.dataset, s.ways, s.shots) for s in specs} == {
        (a, "omniglot", 5, 1) for a in ("maml", "fomaml", "anil", "mamlpp", "reptile", "pretrain")}
    assert sorted({s.seed for s in specs}) == [0, 1]


def test_each_dataset_has_its_own_ways_and_shots_and_an_empty_list_leaves_it_out():
    params = {"grid": {"algorithms": ["maml"], "seeds": [0],
                       "omniglot": {"ways": [5, 20], "shots": [1]}, "miniimagenet": {"ways": [5], "shots": [1, 5]}}}
    assert [(s.dataset, s.ways, s.shots) for s in grid(params)] == [
        ("omniglot", 5, 1), ("omniglot", 20, 1), ("miniimagenet", 5, 1), ("miniimagenet", 5, 5)]
    params["grid"]["omniglot"]["shots"] = []
    assert {s.dataset for s in grid(params)} == {"miniimagenet"}


def test_the_old_product_grid_keys_are_a_clear_error():
    params = {"grid": {"algorithms": ["maml"], "seeds": [0], "datasets": ["omniglot"], "ways": [5], "shots": [1],
                       "omniglot": {"ways": [5], "shots": [1]}, "miniimagenet": {"ways": [], "shots": []}}}
    with pytest.raises(ConfigError, match=r"unknown keys \['datasets', 'shots', 'ways'\].*one \{ways"):
        grid(params)
    del params["grid"]["datasets"], params["grid"]["ways"], params["grid"]["shots"]
    params["grid"]["miniimagenet"] = {"ways": 5, "shots": [1]}
    with pytest.raises(ConfigError, match=r"grid.miniimagenet must be \{ways: \[...\], shots: \[...\]\}"):
        grid(params)


def test_an_algorithm_can_override_the_model_for_one_dataset():
    params = load_params(REPO / "profiles" / "paper.yaml")
    def hidden(algorithm, dataset):
        return resolved_run_config(params, RunSpec(algorithm, dataset, 5, 1, 0))["model"]["hidden"]
    # Antoniou et al. used 48 filters on Mini-ImageNet; MAML and Reptile 32; 64 on Omniglot for all.
    assert (hidden("mamlpp", "miniimagenet"), hidden("maml", "miniimagenet"), hidden("mamlpp", "omniglot")) == (48, 32, 64)
    params["mamlpp"]["model"] = {"miniimagenet": {"filters": 48}}
    with pytest.raises(ConfigError, match=r"mamlpp.model.miniimagenet has unknown keys \['filters'\]"):
        resolved_run_config(params, RunSpec("mamlpp", "miniimagenet", 5, 1, 0))


def test_fomaml_is_maml_with_first_order_forced_on():
    params = {"fomaml": {"inner_lr": 0.4}}
    assert algorithm_config(params, RunSpec("fomaml", "omniglot", 5, 1, 0)).first_order is True
    with pytest.raises(ConfigError, match="fomaml.first_order must be True"):
        algorithm_config({"fomaml": {"first_order": False}}, RunSpec("fomaml", "omniglot", 5, 1, 0))


def test_paper_profile_covers_the_published_omniglot_and_mini_imagenet_settings_with_three_seeds():
    params = load_params(REPO / "profiles" / "paper.yaml")
    specs = grid(params)
    assert {(s.dataset, s.ways, s.shots) for s in specs} == {
        ("omniglot", 5, 1), ("omniglot", 5, 5), ("omniglot", 20, 1), ("omniglot", 20, 5),
        ("miniimagenet", 5, 1), ("miniimagenet", 5, 5)}
    assert {s.algorithm for s in specs} == set(ALGORITHMS)  # the five meta-learners and the baseline
    assert len(specs) == len(ALGORITHMS) * 6 * 3
    for spec in specs:
        algorithm_config(params, spec)  # every cell resolves to a valid config


def test_setting_overrides_apply_to_their_cell_only():
    params = {"reptile": {"inner_lr": 0.001, "settings": {"omniglot-20w1s": {"inner_lr": 0.0005}}}}
    assert algorithm_config(params, RunSpec("reptile", "omniglot", 20, 1, 0)).inner_lr == 0.0005
    assert algorithm_config(params, RunSpec("reptile", "omniglot", 5, 1, 0)).inner_lr == 0.001


def test_unknown_hyperparameter_is_named_in_the_error():
    with pytest.raises(ConfigError, match=r"unknown keys \['inner_lrr'\]"):
        algorithm_config({"maml": {"inner_lrr": 0.1}}, RunSpec("maml", "omniglot", 5, 1, 0))


def test_unknown_algorithm_in_grid_lists_the_allowed_ones():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grid"]["algorithms"] = ["mamml"]
    with pytest.raises(ConfigError, match=r"'mamml' .*neither an algorithm \(maml, fomaml, anil, reptile, mamlpp, pretrain\)"):
        grid(params)


def test_the_number_of_test_tasks_can_differ_per_algorithm_as_in_the_papers():
    params = load_params(REPO / "profiles" / "paper.yaml")
    tasks = {a: resolved_run_config(params, RunSpec(a, "omniglot", 5, 1, 0))["evaluate"]["num_tasks"]
             for a in ("maml", "mamlpp", "anil", "reptile")}
    assert tasks == {"maml": 600, "mamlpp": 600, "anil": 600, "reptile": 10000}
    params["evaluate"]["num_tasks_per_algorithm"] = {"reptlie": 5}
    with pytest.raises(ConfigError, match="reptlie"):
        resolved_run_config(params, RunSpec("maml", "omniglot", 5, 1, 0))


def test_queries_per_class_can_differ_per_algorithm_and_0_means_the_cells_shots():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"]["queries_per_algorithm"] = {"maml": 0, "reptile": 2}
    queries = {(a, k): resolved_run_config(params, RunSpec(a, "omniglot", 5, k, 0))["evaluate"]["queries"]
               for a in ("maml", "fomaml", "reptile") for k in (1, 5)}
    assert queries == {("maml", 1): 1, ("maml", 5): 5,          # Finn et al.: K queries per class
                       ("fomaml", 1): 1, ("fomaml", 5): 1, ("reptile", 1): 2, ("reptile", 5): 2}


def test_k_queries_per_class_are_checked_against_the_examples_a_class_has():
    from gbml.validation import cell_problems, split_shapes

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"]["queries_per_algorithm"] = {"maml": 0}
    spec = RunSpec("maml", "omniglot", 5, 12, 0)        # 12 shots + 12 queries > 20 drawings
    problems = cell_problems(params, spec, split_shapes(params, "omniglot"))
    assert any("12 + 12 = 24 examples per class for evaluation" in p and "queries_per_algorithm" in p
               for p in problems), problems


def test_a_variant_section_is_a_grid_entry_running_its_base_algorithm_with_its_own_settings():
    from gbml.algorithms.mamlpp import MAMLPlusPlus, MAMLPlusPlusConfig
    from gbml.factory import build_algorithm

    params = load_params(REPO / "profiles" / "paper.yaml")
    params["grid"]["algorithms"] = ["maml_msl", "maml_bnwb_bnrs"]
    spec = grid(params)[0]
    assert spec.algorithm == "maml_msl" and spec.name.startswith("maml_msl-omniglot-")
    cfg = algorithm_config(params, spec)
    assert isinstance(cfg, MAMLPlusPlusConfig)
    assert (cfg.msl, cfg.lslr, cfg.per_step_bn, cfg.da, cfg.ca) == (True, False, False, False, False)
    run_cfg = resolved_run_config(params, spec)
    assert run_cfg["base_algorithm"] == "mamlpp"
    algorithm = build_algorithm(spec, run_cfg, (1, 28, 28), torch.device("cpu"))
    assert isinstance(algorithm, MAMLPlusPlus) and algorithm.cfg.msl and not algorithm.inner_lrs


def test_a_grid_name_that_is_neither_algorithm_nor_variant_is_a_clear_error():
    params = load_params(REPO / "params.yaml")
    params["grid"]["algorithms"] = ["maml_msl"]          # not defined in the cpu profile
    with pytest.raises(ConfigError, match="maml_msl.*variant_of"):
        grid(params)
    params["maml_msl"] = {"variant_of": "mampl", "meta_iters": 1}
    with pytest.raises(ConfigError, match="variant_of"):
        grid(params)


def test_a_variant_scores_on_its_base_algorithms_number_of_test_tasks_unless_named():
    params = load_params(REPO / "profiles" / "paper.yaml")
    params["reptile_serial"] = {**params["reptile"], "variant_of": "reptile", "serial": True}
    spec = RunSpec("reptile_serial", "omniglot", 5, 1, 0)
    assert resolved_run_config(params, spec)["evaluate"]["num_tasks"] == 10000
    params["evaluate"]["num_tasks_per_algorithm"]["reptile_serial"] = 50
    assert resolved_run_config(params, spec)["evaluate"]["num_tasks"] == 50


def test_an_evaluation_rule_may_be_per_dataset_and_a_dataset_it_omits_takes_the_next_rule():
    from gbml.config import evaluation_config
    params = load_params(REPO / "profiles" / "paper.yaml")
    assert evaluation_config(params, "mamlpp", 1, "miniimagenet")["queries"] == 15     # MAML++'s 15 targets
    assert evaluation_config(params, "mamlpp", 1, "omniglot")["queries"] == 1
    assert evaluation_config(params, "maml", 5, "miniimagenet")["queries"] == 5        # Finn et al.: K
    params["evaluate"]["queries_per_algorithm"] = {"mamlpp": {"miniimagenet": 15}}
    assert evaluation_config(params, "mamlpp", 1, "omniglot")["queries"] == params["evaluate"]["queries"]


def test_a_queued_dvc_experiment_resolves_the_store_and_data_sources_in_the_users_repository(tmp_path, monkeypatch):
    from gbml.config import home_root
    from gbml.tracking_store import tracking_uri

    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))   # DVC sets it to the user's repository in queued runs
    assert home_root(copy) == tmp_path.resolve()
    assert tracking_uri({}, home_root(copy)) == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"
    assert home_root(tmp_path) == tmp_path.resolve()       # a plain `dvc repro` or `dvc exp run`
    monkeypatch.setenv("DVC_ROOT", str(copy))              # DVC's own default: the stage's repository
    assert home_root(copy) == copy.resolve()
    monkeypatch.delenv("DVC_ROOT")
    assert home_root(copy) == copy.resolve()
