"""The committed profile's numbers do not move unless a change means them to.

``dvc.lock`` and ``reports/`` come from a real ``dvc repro``; a code change that adds a switch
but keeps the defaults must leave every output as it was. This pins, for each algorithm under
the committed ``params.yaml``, two meta-steps and one test-time adaptation on fixed synthetic
images: the parameters it reaches and the query logits in each evaluation mode.

The reference is not a table of numbers but the code that trained the committed outputs
(``TRAINED_BY``), run beside the current code on the same machine: float32 kernels differ
between CPUs (an AMD EPYC and the machine that took the first golden values disagreed in the
fifth digit, and Reptile's Adam steps on near-zero gradients grow that to the third), so only
the same CPU can say "unchanged", and there it can say it bit for bit. A change that is meant
to move the defaults re-runs ``dvc repro`` and points ``TRAINED_BY`` at its own code.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config
from gbml.data.tasks import EpisodeSampler, stack_tasks
from gbml.evaluate import ALL_MODES, nil_log_probs, predict_query
from gbml.factory import build_algorithm, seed_everything

REPO = Path(__file__).resolve().parents[1]
# Per algorithm, a commit whose code computes what trained the committed dvc.lock's runs (a fresh
# `dvc repro`); the commits since were each shown to compute its fingerprints before their
# dvc.lock was committed. d43513a's `dvc repro` (2026-12-04) trained all six. Before it, acfed19
# (the meta-learners) and c701c87 (the baseline) were the reference; on that day's AVX-512 EPYC
# the current code's test-time adaptation differed from theirs in the seventh digit (the two
# meta-steps still agreed bit for bit; which change takes other float32 kernels there was not
# traced), while on CI's CPU of 2026-12-03 it computed theirs bit for bit -- the re-run made the
# committed outputs the current code's own.
TRAINED_BY = dict.fromkeys(("maml", "fomaml", "anil", "mamlpp", "reptile", "pretrain"),
                           "d43513ab6f74b47e7f30bae1213c479243fc2044")
ALGORITHMS = tuple(TRAINED_BY)


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
    # The joint-training baseline has a stream of its own: one globally labelled minibatch a step.
    own = algo.train_sampler(images, None, seed=0)
    draw = own.sample_tasks if own is not None else EpisodeSampler(images, 5, *algo.train_episode_shape,
                                                                   seed=0).sample_batch
    for iteration in range(2):
        algo.meta_step(draw(algo.meta_batch), iteration)
    theta = torch.cat([p.detach().double().reshape(-1) for p in algo.model.parameters()])
    task = EpisodeSampler(images, 5, 1, 1, seed=1).sample()
    tasks = stack_tasks([task])    # a stack of one
    with torch.no_grad():
        adapted = algo.adapt(tasks.support_x, tasks.support_y, [torch.Generator().manual_seed(0)])
        logits = [predict_query(algo.predict, adapted, tasks, m).double().sum().item() for m in ALL_MODES[:2]]
        logits.append(nil_log_probs(algo.model.features, task, 5).double().sum().item())
    return [theta.sum().item(), theta.pow(2).sum().item(), *logits]


# Run in a fresh interpreter with one checkout's src/ and tests/ first on the path, so each side
# computes with its own code, its own params.yaml and its own definition of the fingerprint.
_FINGERPRINTS = """
import json, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
import gbml
assert Path(gbml.__file__).resolve().is_relative_to(root), f"imported {gbml.__file__}, not {root}"
from test_defaults_stable import fingerprint
print(json.dumps({a: fingerprint(root, a) for a in sys.argv[2:]}))
"""


def fingerprints_of(root: Path, algorithms=ALGORITHMS) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "tests")])}
    done = subprocess.run([sys.executable, "-c", _FINGERPRINTS, str(root), *algorithms],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def checkout(commit: str, into: Path) -> Path:
    """The commit's src/, tests/ and params.yaml under ``into`` (git archive: no work tree touched)."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"needs the git history holding {commit[:7]} (the code that trained the "
                    "committed outputs): run the tests in a full `git clone`")
    tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src", "tests", "params.yaml"],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


@pytest.fixture(scope="module")
def trained_by(tmp_path_factory) -> dict[str, list[float]]:
    found = {}
    for commit in dict.fromkeys(TRAINED_BY.values()):
        algorithms = [a for a, c in TRAINED_BY.items() if c == commit]
        found |= fingerprints_of(checkout(commit, tmp_path_factory.mktemp(commit[:7])), algorithms)
    return found


@pytest.fixture(scope="module")
def current() -> dict[str, list[float]]:
    return fingerprints_of(REPO)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_committed_defaults_compute_what_the_committed_outputs_came_from(algorithm, trained_by, current):
    assert current[algorithm] == trained_by[algorithm]    # same CPU, same code path: bit for bit


def test_the_fingerprint_sees_a_change_to_the_defaults(tmp_path):
    """The check can fail: one inner step more under MAML moves the fingerprint."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["maml"]["inner_steps"] += 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert fingerprint(tmp_path, "maml") != fingerprint(REPO, "maml")


def test_seeding_turns_on_deterministic_kernels_without_importing_the_compiler():
    """``seed_everything`` sets the flag eager kernels read, as ``torch.use_deterministic_algorithms
    (True, warn_only=True)`` does, but leaves ``torch._inductor`` unimported (seconds of every
    process's start; gbml never compiles). A fresh interpreter, so nothing imported it before."""
    code = ("import sys, torch; from gbml.factory import seed_everything; seed_everything(0, 1); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]
