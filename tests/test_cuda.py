"""The ``cuda`` tier: the pipeline's GPU path, end to end, on real Omniglot.

Runs only where CUDA exists. Elsewhere every test skips with the reason, unless
``GBML_REQUIRE_CUDA=1`` (set by ``benchmarks/gpu_check.sh``): then a missing device fails. The
device under test is ``GBML_TEST_DEVICE`` (default ``cuda``); ``GBML_TEST_DEVICE=cpu`` runs the
same logic on the CPU, to check the tests themselves on a machine without a GPU.

Per algorithm (MAML, first-order MAML, ANIL, MAML++, Reptile):

* a training process is SIGKILLed right after a resume checkpoint, run again to resume, and the
  run is evaluated in every mode (transductive, non-transductive, NIL): the checkpoint loading
  that crashed on CUDA (issue 17: RNG states moved to the GPU by ``map_location``);
* the device's meta-steps agree with the CPU's on the same seed and tasks;
* training and evaluation under ``training.autocast: bf16`` run (CUDA only, by design).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config
from gbml.data.prepared import load_split
from gbml.meta_training import training_stream
from gbml.factory import build_algorithm, seed_everything
from gbml.perf import autocast

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ["maml", "fomaml", "anil", "mamlpp", "reptile", "pretrain"]
DEVICE = os.environ.get("GBML_TEST_DEVICE", "cuda")
KILL_AT = 8   # the resume checkpoint after which the first training process is killed
# One training run in its own process: argv = run spec, config (json), prepared dir, run dir.
# With GBML_KILL_AT it SIGKILLs itself just after writing the first resume checkpoint at or past
# that iteration: a real kill at a known point, however fast the device runs.
DRIVER = """
import json, os, signal, sys
from pathlib import Path
import gbml.checkpoints as checkpoints
import gbml.train as train
from gbml.config import RunSpec
kill_at, write = int(os.environ.get("GBML_KILL_AT", "0")), checkpoints.Saver.write
def write_then_die(saver, state):
    write(saver, state)
    if kill_at and state.iteration >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoints.Saver.write = write_then_die
spec, cfg = RunSpec(**json.loads(sys.argv[1])), json.loads(sys.argv[2])
train.train_run(spec, cfg, Path(sys.argv[3]), Path(sys.argv[4]), progress=False)
"""

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="session", autouse=True)
def device() -> torch.device:
    """The device under test; session-scoped so that it skips before any data is prepared."""
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        reason = (f"no CUDA device (torch {torch.__version__}, {build}): the cuda tier runs on a GPU "
                  "machine (bash benchmarks/gpu_check.sh)")
        if os.environ.get("GBML_REQUIRE_CUDA") == "1":
            pytest.fail(f"GBML_REQUIRE_CUDA=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return torch.device(DEVICE)


def config(spec: RunSpec, device: torch.device) -> dict:
    """The CPU profile (params.yaml) shrunk to 16 meta-iterations on ``device``: resume
    checkpoints every 4, MAML++ epochs of 4 (each a curve point and ensemble candidate)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in ALGORITHMS:
        params[name].update(meta_iters=16, meta_batch=4)
    params["reptile"].update(eval_inner_iters=5)
    params["mamlpp"].update(iters_per_epoch=4, inner_steps=2, eval_inner_steps=2, msl_epochs=1,
                            first_order_epochs=1, ensemble_top_n=2)
    params["training"].update(device=device.type, threads=0, checkpoint_every=4, log_every=4,
                              curve_every=8, curve_tasks=4)
    params["evaluate"].update(num_tasks=50, modes=["transductive", "non_transductive", "nil"])
    return resolved_run_config(params, spec)


def train_process(spec: RunSpec, cfg: dict, prepared: Path, run_dir: Path, kill_at: int = 0):
    env = dict(os.environ, GBML_REUSE_RUNS="0", GBML_KILL_AT=str(kill_at))
    args = [json.dumps(spec.__dict__), json.dumps(cfg), str(prepared), str(run_dir)]
    return subprocess.run([sys.executable, "-c", DRIVER, *args], env=env, text=True, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_killed_run_resumes_on_the_device_and_evaluates_in_every_mode(algorithm, device, maml_dir, tmp_path):
    from gbml.evaluate import evaluate_run
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    cfg, run_dir = config(spec, device), tmp_path / "run"
    killed = train_process(spec, cfg, maml_dir, run_dir, kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    assert (tmp_path / "run.partial" / "resume.pt").is_file() and not run_dir.exists()

    resumed = train_process(spec, cfg, maml_dir, run_dir)
    assert resumed.returncode == 0, resumed.stdout
    assert f"resuming at iteration {KILL_AT}" in resumed.stdout
    history = json.loads((run_dir / "history.json").read_text())
    assert history[-1]["step"] == 16 and all(math.isfinite(row["train_loss"]) for row in history)

    metrics = evaluate_run(spec, cfg, maml_dir, run_dir, tmp_path / "eval", progress=False)
    for mode in ("transductive", "non_transductive", "nil"):
        # 250 queries: chance (0.2, what a broken path scores) stays below 0.28 (3 sd); measured
        # on the CPU after 16 iterations: 0.34-0.64.
        assert 0.28 < metrics[f"test_acc_{mode}"] <= 1.0, (mode, metrics)
    if algorithm == "mamlpp":
        assert metrics["ensemble_size"] == 2


def flat(algorithm) -> torch.Tensor:
    return torch.cat([p.detach().cpu().reshape(-1) for p in algorithm.params.values()])


def lockstep(spec: RunSpec, cfg: dict, images: torch.Tensor, device: torch.device, steps: int,
             precision: str = "none") -> list[tuple[float, float, float]]:
    """``steps`` meta-steps on the CPU, each also taken on ``device`` from the same state: before
    every step the CPU algorithm's state (parameters, Adam moments, MAML++'s rates, Reptile's
    inner Adam state, the minibatch generator) is loaded into the device's, and both meta-step on
    the same tasks (sampled from CPU images, then moved). Per step: the CPU's training loss, the
    device's, and how far apart the updated parameters are relative to the CPU's update.
    Lock-step, because free-running float32 trajectories drift apart (see the test)."""
    seed_everything(spec.seed, 0)
    shape = tuple(images.shape[2:])
    cpu, dev = (build_algorithm(spec, cfg, shape, d) for d in (torch.device("cpu"), device))
    sampler = training_stream(cpu, images, spec, counts=None)
    rows = []
    for i in range(steps):
        dev.load_state_dict(copy.deepcopy(cpu.state_dict()))   # a copy: loading may alias CPU tensors
        before, tasks = flat(cpu), sampler.sample_tasks(cpu.meta_batch)
        ref = cpu.meta_step(tasks, i)["train_loss"]
        with autocast(device, precision):
            got = dev.meta_step(tasks.to(device), i)["train_loss"]
        rows.append((ref, got, float((flat(dev) - flat(cpu)).norm() / (flat(cpu) - before).norm())))
    return rows


@pytest.fixture
def no_tf32():
    """TF32 matmuls/convolutions round to 10 mantissa bits: off, so both devices use float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_meta_steps_on_the_device_agree_with_the_cpu(algorithm, device, maml_dir, no_tf32):
    """Five meta-steps, each from the same state on the same tasks, agree: the training loss
    within relative 1e-3, the updated parameters within 10% of the update's norm.

    Why these: the loss of a step from identical parameters differs only by float32 summation
    order (measured CPU float32 vs float64, 5 steps x 3 seeds x 5 algorithms: <= 5e-6), so 1e-3
    leaves room for cuDNN's other algorithms while any device bug (other tasks or inner
    minibatches, misplaced statistics or optimiser state) moves it by far more. The update is
    looser: the conv biases ahead of batch norm have an exact gradient of zero, so they receive
    rounding noise, which Adam scales to full lr-sized steps of either sign (measured: 1-3% of
    the update's norm). Free-running trajectories are not compared: those sign flips compound,
    and after 5 steps float32 and float64 losses already differ by up to 2e-2."""
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    cfg, images = config(spec, device), load_split(maml_dir, "train").images
    for step, (ref, got, update_gap) in enumerate(lockstep(spec, cfg, images, device, steps=5)):
        assert got == pytest.approx(ref, rel=1e-3), f"meta-step {step}"
        assert update_gap < 0.1, f"meta-step {step}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bf16_autocast_trains_and_evaluates(algorithm, device, maml_dir, tmp_path):
    """``training.autocast: bf16``: a meta-step's loss within 5% of the CPU's float32 one from
    the same state (bfloat16 keeps 8 mantissa bits, ~0.4% per rounding), and a full train +
    evaluate run."""
    if device.type != "cuda":
        pytest.skip("bf16 autocast is CUDA-only: gbml.perf.autocast refuses it on a CPU by design")
    from gbml.evaluate import evaluate_run
    from gbml.train import train_run
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    cfg, images = config(spec, device), load_split(maml_dir, "train").images
    [(float32, bf16, _)] = lockstep(spec, cfg, images, device, steps=1, precision="bf16")
    assert bf16 == pytest.approx(float32, rel=5e-2)

    cfg["training"]["autocast"] = "bf16"
    summary = train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)
    assert summary["autocast"] == "bf16" and math.isfinite(summary["final_train_acc"])
    metrics = evaluate_run(spec, cfg, maml_dir, tmp_path / "run", tmp_path / "eval", progress=False)
    for mode in ("transductive", "non_transductive", "nil"):
        assert 0.28 < metrics[f"test_acc_{mode}"] <= 1.0, (mode, metrics)


def test_the_non_finite_check_sees_nan_and_inf_on_the_device(device):
    """``training.nonfinite`` rests on one multi-tensor reduction (``gbml.meta_training.all_finite``),
    whose device kernel must propagate NaN as the CPU's does."""
    from gbml.meta_training import all_finite

    tensors = [torch.ones(1000, device=device), torch.zeros(3, 3, device=device)]
    assert all_finite(tensors)
    for bad in (math.nan, math.inf, -math.inf):
        poisoned = [t.clone() for t in tensors]
        poisoned[0][517] = bad
        assert not all_finite(poisoned), bad
