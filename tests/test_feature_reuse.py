"""Specification of the feature-reuse study's measurements (Raghu et al. 2020) on a tiny Conv4."""

import numpy as np
import pytest
import torch

from gbml.algorithms.anil import ANIL, ANILConfig
from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.evaluate import evaluate
from gbml.models.conv4 import Conv4
from gbml.studies.config import FeatureReuseConfig as Config
from gbml.studies.feature_reuse import (freezing_rows, representations, similarity_rows,
                                        with_frozen_layers)

WAYS, SHOTS = 3, 1


def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 8, 1, 28, 28), generator=g, dtype=torch.uint8)


def algorithm(cls=MAML, cfg_cls=MAMLConfig, **overrides):
    torch.manual_seed(0)
    model = Conv4(WAYS, hidden=8)
    return cls(model, cfg_cls(**{"eval_inner_steps": 2, "inner_lr": 0.4, **overrides}), shots=SHOTS)


def test_representations_are_each_layer_output_and_the_head_gives_the_logits():
    maml = algorithm()
    x = torch.rand(5, 1, 28, 28)
    reps = representations(maml.model, maml.params, x)
    assert list(reps) == ["conv1", "conv2", "conv3", "conv4", "head"]
    assert reps["conv1"].shape == (5, 8, 14, 14) and reps["conv4"].shape == (5, 8, 2, 2)
    assert torch.allclose(reps["head"], maml.model(x))


def test_freezing_k_layers_leaves_exactly_them_at_the_initialisation():
    maml = algorithm()
    x, y = torch.rand(3, 1, 28, 28), torch.arange(3)
    for k in range(5):
        adapted = {name: p[0] for name, p in with_frozen_layers(maml, k).adapt(x[None], y[None]).items()}
        for name, p in maml.params.items():
            frozen = name.startswith(tuple(f"blocks.{i}." for i in range(k)))
            assert torch.equal(adapted[name], p.detach()) == frozen, (k, name)
    assert len(maml.inner_names) == len(maml.params)   # the algorithm itself is untouched


def test_every_conv_layer_frozen_scores_as_anil_with_the_same_weights():
    maml, anil = algorithm(), algorithm(ANIL, ANILConfig)
    anil.model.load_state_dict(maml.model.state_dict())
    cfg = Config(freeze_tasks=12, modes=("transductive",))
    rows = freezing_rows(maml, evaluate, images(), WAYS, SHOTS, cfg)
    head_only = [r for r in rows if r["frozen"] == 4][0]
    anil_acc = evaluate(anil, images(), WAYS, SHOTS, 1, 12, cfg.seed, modes=("transductive",), progress=False)
    np.testing.assert_array_equal(head_only["per_task"], anil_acc["transductive"])
    assert sorted({r["frozen"] for r in rows}) == [0, 1, 2, 3, 4]


def test_an_inner_loop_that_adapts_only_the_head_leaves_the_body_identical():
    anil = algorithm(ANIL, ANILConfig)
    rows = similarity_rows(anil, images(), WAYS, SHOTS, Config(similarity_tasks=3, queries=5))
    for r in rows:
        if r["layer"] != "head":
            assert r["cka"] == pytest.approx(1.0, abs=1e-9) and r["cca"] == pytest.approx(1.0, abs=1e-9)
    assert max(r["cka"] for r in rows if r["layer"] == "head") < 1 - 1e-6


def test_a_vanishing_inner_step_changes_no_layer():
    maml = algorithm(inner_lr=1e-9)
    rows = similarity_rows(maml, images(), WAYS, SHOTS, Config(similarity_tasks=2, queries=5))
    assert all(r["cka"] == pytest.approx(1.0, abs=1e-6) for r in rows)


def test_the_summary_pairs_each_frozen_count_with_no_freezing_task_by_task():
    from gbml.studies.feature_reuse import summary
    import pandas as pd

    base, frozen = np.array([1.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 0.0])
    rows = [{"algorithm": "maml", "setting": "omniglot-5w1s", "seed": s, "frozen": k, "mode": "transductive",
             "per_task": base if k == 0 else frozen} for s in (0, 1) for k in (0, 4)]
    out = summary(pd.DataFrame(columns=["algorithm", "setting", "layer", "cka", "cca"]), rows)
    k4 = out["freezing"]["maml"]["omniglot-5w1s"]["transductive"][4]
    assert k4["mean"] == pytest.approx(0.75) and k4["change"] == pytest.approx(0.0)
    differences = np.tile(frozen - base, 2)
    assert k4["change_ci95"] == pytest.approx(1.959963984540054 * differences.std(ddof=1) / np.sqrt(8), rel=1e-9)


def test_a_study_of_an_algorithm_the_grid_does_not_train_is_refused_before_anything_runs(tmp_path):
    import yaml
    from pathlib import Path

    from gbml.errors import ConfigError
    from gbml.validation import validate_params

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["grid"]["algorithms"] = ["maml", "reptile"]
    with pytest.raises(ConfigError, match=r"studies.feature_reuse.algorithms: \['anil'\] not in grid.algorithms"):
        validate_params(params)
    params["studies"]["feature_reuse"]["algorithms"] = ["maml", "reptile"]
    with pytest.raises(ConfigError, match="non-empty subset of"):
        validate_params(params)
    params["studies"]["feature_reuse"].update(algorithms=["maml"], freeze_typo=1)
    with pytest.raises(ConfigError, match="freeze_typo"):
        validate_params(params)


def test_a_params_file_without_studies_is_valid_and_every_study_takes_its_defaults():
    import yaml
    from pathlib import Path

    from gbml.validation import validate_params
    from gbml.studies.config import FeatureReuseConfig, study_config

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    del params["studies"]
    validate_params(params)       # older params files (and the fidelity study's) keep working
    assert study_config(params, "feature_reuse") == FeatureReuseConfig()
