"""Checkpoints cross device types: the CPU-only tier that catches the bug class behind issue 17's
GPU crash (``torch.load(map_location=device)`` handed a CUDA tensor to a CPU ``torch.Generator``:
"RNG state must be a torch.ByteTensor", so evaluation and resume failed on every GPU).

The specification:

* an algorithm's ``state_dict`` keeps every generator state as a CPU byte tensor, wherever the
  algorithm lives;
* ``load_state_dict`` takes a state from any device: every tensor lands on the algorithm's
  device (PyTorch keeps Adam's ``step`` counters on the CPU by design), generator states go back
  to the CPU;
* a train -> kill -> resume -> evaluate cycle completes, bitwise equal to an uninterrupted run,
  when loading puts the checkpoints' generator states on another device.

A CPU build of torch has two other device types to stand in for CUDA: ``meta`` (shapes, no
data: an algorithm can be built there and loaded, not run) and ``lazy`` (TorchScript's lazy
tensors, which carry data and refuse to be a CPU generator's state, as CUDA tensors do). The
``cuda`` tier (tests/test_cuda.py) runs the real thing where CUDA exists.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from gbml.checkpoints import Saver
from gbml.config import RunSpec, resolved_run_config
from gbml.evaluate import evaluate_run
from gbml.factory import build_algorithm
from gbml.io import load_checkpoint
from gbml.meta_training import training_stream
from gbml.train import train_run

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ["maml", "fomaml", "anil", "mamlpp", "reptile", "pretrain"]
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def lazy() -> torch.device:
    """A non-CPU device type that holds data on a CPU-only machine."""
    try:
        import torch._lazy.ts_backend
        torch._lazy.ts_backend.init()
        torch.zeros(1, device="lazy").cpu()
    except Exception as err:  # noqa: BLE001 -- any failure means this torch build lacks it
        pytest.skip(f"torch {torch.__version__} has no working lazy device ({err}); the meta-device tests still run")
    return torch.device("lazy")


def config(algorithm: str, **training) -> tuple[RunSpec, dict]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[algorithm].update(meta_iters=6, meta_batch=2)
    params["reptile"].update(eval_inner_iters=3)
    params["mamlpp"].update(iters_per_epoch=2, inner_steps=2, eval_inner_steps=2, msl_epochs=2,
                            first_order_epochs=2, ensemble_top_n=2)
    params["training"].update(log_every=2, curve_every=2, curve_tasks=2, threads=1, **training)
    params["evaluate"].update(num_tasks=4, modes=["transductive", "non_transductive", "nil"])
    spec = RunSpec(algorithm, "omniglot", 5, 1, 0)
    return spec, resolved_run_config(params, spec)


def trained(algorithm: str):
    """An algorithm on the CPU after two meta-steps (so its optimiser states exist)."""
    spec, cfg = config(algorithm)
    alg = build_algorithm(spec, cfg, SHAPE, torch.device("cpu"))
    images = torch.randint(0, 256, (10, 20, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sampler = training_stream(alg, images, spec, counts=None)
    for i in range(2):
        alg.meta_step(sampler.sample_tasks(alg.meta_batch), i)
    return alg


def tensors(tree, path=()):
    """Every tensor in a nested state, with its key path."""
    if isinstance(tree, dict):
        return [t for k, v in tree.items() for t in tensors(v, (*path, k))]
    if isinstance(tree, (list, tuple)):
        return [t for i, v in enumerate(tree) for t in tensors(v, (*path, i))]
    return [(path, tree)] if isinstance(tree, torch.Tensor) else []


def mapped(tree, fn):
    if isinstance(tree, dict):
        return {k: mapped(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(mapped(v, fn) for v in tree)
    return fn(tree) if isinstance(tree, torch.Tensor) else tree


def is_generator_state(t: torch.Tensor) -> bool:
    return t.dtype == torch.uint8   # a checkpoint holds no other byte tensors


def on_meta(algorithm: str, state: dict):
    spec, cfg = config(algorithm)
    alg = build_algorithm(spec, cfg, SHAPE, torch.device("meta"))
    with warnings.catch_warnings():   # "copying from a non-meta parameter ... is a no-op": that is the point
        warnings.simplefilter("ignore", UserWarning)
        alg.load_state_dict(state)
    return alg


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_state_loads_onto_an_algorithm_on_another_device_with_every_tensor_moved_there(algorithm):
    alg = on_meta(algorithm, trained(algorithm).state_dict())
    for path, t in tensors(alg.state_dict()):
        if is_generator_state(t):
            assert t.device.type == "cpu", f"{path}: a generator state must stay a CPU tensor"
        elif path[-1] != "step":      # Adam keeps its step counters on the CPU by design
            assert t.device.type == "meta", f"{path} stayed on {t.device} after loading onto the meta device"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_generator_states_from_another_device_go_back_to_the_cpu_bitwise(algorithm, lazy):
    original = trained(algorithm)
    state = mapped(original.state_dict(), lambda t: t.to(lazy) if is_generator_state(t) else t)
    spec, cfg = config(algorithm)
    restored = build_algorithm(spec, cfg, SHAPE, torch.device("cpu"))
    restored.load_state_dict(state)    # on 3bcdf01: TypeError: RNG state must be a torch.ByteTensor
    for (path, a), (_, b) in zip(tensors(original.state_dict()), tensors(restored.state_dict())):
        assert a.device == b.device and torch.equal(a, b), path


def test_checkpoints_load_on_the_cpu_as_tensors_only(tmp_path, monkeypatch):
    """Whatever device saved them (map_location="cpu"), and with no code run (weights_only)."""
    path, calls, real_load = tmp_path / "checkpoint.pt", [], torch.load
    torch.save(trained("reptile").state_dict(), path)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(kwargs) or real_load(*args, **kwargs))
    load_checkpoint(path)
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def kill_after_first_checkpoint(monkeypatch, spec, cfg, prepared, run_dir) -> None:
    """Train until the first resume checkpoint is written, then stop as a kill would."""
    real_write = Saver.write

    def write_then_die(self, state):
        real_write(self, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Saver, "write", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_run(spec, cfg, prepared, run_dir, progress=False)
    assert (run_dir.with_name(run_dir.name + ".partial") / "resume.pt").is_file()


@pytest.mark.parametrize("algorithm", ["maml", "mamlpp", "reptile"])
def test_train_kill_resume_evaluate_completes_when_checkpoints_load_onto_another_device(
        algorithm, maml_dir, tmp_path, monkeypatch, lazy):
    spec, cfg = config(algorithm, checkpoint_every=2)
    train_run(spec, cfg, maml_dir, tmp_path / "a", progress=False)

    run_dir = tmp_path / "b"
    kill_after_first_checkpoint(monkeypatch, spec, cfg, maml_dir, run_dir)
    real_load = torch.load

    def load_onto_another_device(*args, **kwargs):   # what map_location=<a GPU> did to generator states
        return mapped(real_load(*args, **kwargs), lambda t: t.to(lazy) if is_generator_state(t) else t)

    monkeypatch.setattr(torch, "load", load_onto_another_device)
    train_run(spec, cfg, maml_dir, run_dir, progress=False)
    metrics = evaluate_run(spec, cfg, maml_dir, run_dir, tmp_path / "evals", progress=False)
    monkeypatch.setattr(torch, "load", real_load)

    assert {"test_acc_transductive", "test_acc_non_transductive", "test_acc_nil"} <= set(metrics)
    uninterrupted, resumed = (load_checkpoint(d / "checkpoint.pt")["model"] for d in (tmp_path / "a", run_dir))
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
