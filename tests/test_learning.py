"""Every algorithm learns: a short meta-training run on real Omniglot (5-way 1-shot, the
validation/test characters never seen in training) beats chance (20%) by a clear margin.

A slow-tier test: each run is a few hundred tasks on the CPU, far from the published budgets, so
the bar is "clearly above chance", not the papers' numbers (those are the profiles' job)."""

from __future__ import annotations

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config
from gbml.data.prepared import load_split
from gbml.evaluate import evaluate
from gbml.factory import build_algorithm, seed_everything
from gbml.train import train_run
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
CHANCE = 0.2
# Meta-iterations per algorithm: enough to be clearly above chance in well under a minute each.
SHORT = {"maml": 150, "fomaml": 150, "anil": 150, "mamlpp": 120, "reptile": 300, "pretrain": 400}


def short_config(spec: RunSpec) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[spec.algorithm]["meta_iters"] = SHORT[spec.algorithm]
    params["mamlpp"].update(iters_per_epoch=40, ensemble_top_n=2)
    params["training"].update(log_every=20, curve_every=1000, curve_tasks=10, threads=2)
    return resolved_run_config(params, spec)


@pytest.mark.parametrize("algorithm", sorted(SHORT))
def test_a_short_meta_training_run_beats_chance_on_held_out_characters(algorithm, maml_dir, tmp_path):
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    cfg = short_config(spec)
    train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)

    seed_everything(0, 2)
    images = load_split(maml_dir, "test").images
    trained = build_algorithm(spec, cfg, tuple(images.shape[2:]), torch.device("cpu"))
    trained.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True))
    untrained = build_algorithm(spec, cfg, tuple(images.shape[2:]), torch.device("cpu"))
    score = {name: evaluate(a, images, 5, 1, queries=2, num_tasks=60, seed=5, modes=("transductive",),
                            progress=False)["transductive"].mean()
             for name, a in (("trained", trained), ("untrained", untrained))}
    assert score["trained"] > CHANCE + 0.25, score
    assert score["trained"] > score["untrained"] + 0.1, score
