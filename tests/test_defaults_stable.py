"""The committed profile's numbers do not move unless a change means them to.

``dvc.lock`` and ``reports/`` come from a real ``dvc repro``; a code change that adds a switch
but keeps the defaults must leave every output as it was. This pins, for each algorithm under
the committed ``params.yaml``, two meta-steps and one test-time adaptation on fixed synthetic
images: the parameters it reaches and the query logits in each evaluation mode. The values were
computed by the code that produced the committed ``dvc.lock`` (commit 521428c) and reproduce
bit for bit on this project's machines; the tolerance only absorbs other CPUs' float rounding.
A change that is meant to move the defaults updates them, and ``dvc.lock`` with a new repro.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config
from gbml.data.tasks import EpisodeSampler
from gbml.evaluate import ALL_MODES, nil_log_probs, predict_query
from gbml.factory import build_algorithm, seed_everything

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ("maml", "fomaml", "anil", "mamlpp", "reptile")


def fingerprint(root: Path, algorithm: str) -> list[float]:
    """Sum and sum of squares of the parameters after two meta-steps, then the sum of the query
    logits (log-probabilities for nil) of one adapted test task in each evaluation mode. On one
    thread: Reptile's Adam steps on near-zero gradients amplify a reordered sum to 1e-4."""
    threads = torch.get_num_threads()
    try:
        return _fingerprint(root, algorithm)
    finally:
        torch.set_num_threads(threads)


def _fingerprint(root: Path, algorithm: str) -> list[float]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    seed_everything(0, 1)
    algo = build_algorithm(spec, resolved_run_config(params, spec), (1, 28, 28), torch.device("cpu"))
    images = (torch.rand(40, 20, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    sampler = EpisodeSampler(images, 5, *algo.train_episode_shape, seed=0)
    for iteration in range(2):
        algo.meta_step(sampler.sample_batch(algo.meta_batch), iteration)
    theta = torch.cat([p.detach().double().reshape(-1) for p in algo.model.parameters()])
    task = EpisodeSampler(images, 5, 1, 1, seed=1).sample()
    with torch.no_grad():
        adapted = algo.adapt(task.support_x, task.support_y, torch.Generator().manual_seed(0))
        logits = [predict_query(algo.predict, adapted, task, m).double().sum().item() for m in ALL_MODES[:2]]
        logits.append(nil_log_probs(algo.model.features, task, 5).double().sum().item())
    return [theta.sum().item(), theta.pow(2).sum().item(), *logits]


GOLDEN = {   # fingerprint(REPO, a) computed by the code at 521428c
    "maml": [256.6281531801237, 346.19194383568725, -2.923788469284773, 0.017792288679629564, -40.25768828392029],
    "fomaml": [255.49989225572574, 346.22850477577674, -5.360205426812172, -1.6375486887991428, -40.25083768367767],
    "anil": [253.9047771207479, 346.19726003371466, -4.426173084415495, -3.374464014545083, -40.257983684539795],
    "mamlpp": [767.2942775832125, 858.2199601008144, -3.9762466698884964, -0.5624988519120961, -40.26637506484985],
    "reptile": [253.2519714109656, 346.1798378039626, -5.075160562992096, -2.3123869635164738, -40.25943613052368],
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_committed_defaults_compute_what_the_committed_outputs_came_from(algorithm):
    torch.testing.assert_close(fingerprint(REPO, algorithm), GOLDEN[algorithm], rtol=1e-5, atol=1e-6)
