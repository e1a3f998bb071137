"""Meta-training runs: deterministic for a seed, complete run directories, nothing partial."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from gbml.config import RunSpec, resolved_run_config
from gbml.train import train_run

REPO = Path(__file__).resolve().parents[1]


def tiny_config(spec: RunSpec) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["maml"].update(meta_iters=4, meta_batch=2)
    params["reptile"].update(meta_iters=4, meta_batch=2, eval_inner_iters=3)
    params["pretrain"].update(meta_iters=4, meta_batch=8)
    params["training"].update(log_every=2, curve_every=2, curve_tasks=2, threads=1)
    return resolved_run_config(params, spec)


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "pretrain"])
def test_same_seed_gives_bitwise_identical_parameters_other_seed_does_not(algorithm, maml_dir, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        spec = RunSpec(algorithm, "omniglot", 5, 1, seed)
        train_run(spec, tiny_config(spec), maml_dir, tmp_path / name, progress=False)
        runs[name] = checkpoint(tmp_path / name)
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_run_directory_holds_config_checkpoint_and_learning_curve(maml_dir, tmp_path):
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    cfg = tiny_config(spec)
    summary = train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "config.json").read_text()) == json.loads(json.dumps(cfg))
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["step"] for row in history] == [2, 4]
    assert all("val_acc" in row for row in history)  # the MAML split has validation classes
    assert summary["curve_split"] == "val" and summary["meta_iters"] == 4
    weights = checkpoint(run_dir)
    assert weights["classifier.weight"].shape == (5, 256) and "blocks.3.norm.weight" in weights


def test_a_failing_run_leaves_no_run_directory(maml_dir, tmp_path, monkeypatch):
    from gbml.algorithms.maml import MAML

    def broken(self, episodes, iteration):
        raise RuntimeError("boom")

    monkeypatch.setattr(MAML, "meta_step", broken)
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    with pytest.raises(RuntimeError, match="boom"):
        train_run(spec, tiny_config(spec), maml_dir, tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_autocast_on_a_cpu_is_refused_before_any_work_with_the_fix(maml_dir, tmp_path):
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    cfg = tiny_config(spec)
    cfg["training"]["autocast"] = "bf16"
    cfg["training"]["device"] = "cpu"
    with pytest.raises(ValueError, match="set training.autocast: none"):
        train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_autocast_none_computes_in_float32_and_is_recorded(maml_dir, tmp_path):
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    summary = train_run(spec, tiny_config(spec), maml_dir, tmp_path / "run", progress=False)
    assert summary["autocast"] == "none"
    assert all(w.dtype == torch.float32 for w in checkpoint(tmp_path / "run").values())


def poison_meta_batch(monkeypatch, at_call: int) -> None:
    """Make the ``at_call``-th meta-batch's images NaN: a real non-finite loss and gradient."""
    from gbml.data.tasks import EpisodeSampler
    original, calls = EpisodeSampler.sample_tasks, {"n": 0}

    def sample_tasks(self, n):
        tasks = original(self, n)
        calls["n"] += 1
        if calls["n"] == at_call:
            tasks = dataclasses.replace(tasks, support_x=torch.full_like(tasks.support_x, float("nan")))
        return tasks
    monkeypatch.setattr(EpisodeSampler, "sample_tasks", sample_tasks)


def test_a_non_finite_loss_stops_training_naming_the_iteration_and_keeps_the_last_checkpoint(
        maml_dir, tmp_path, monkeypatch):
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    cfg = tiny_config(spec)
    cfg["algorithm"]["meta_iters"] = 6
    cfg["training"].update(checkpoint_every=2, curve_every=100)
    poison_meta_batch(monkeypatch, at_call=4)
    with pytest.raises(RuntimeError, match=r"meta-iteration 4: .*not finite.*iteration 2\) is kept.*nonfinite: skip"):
        train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)
    resume = torch.load(tmp_path / "run.partial" / "resume.pt", weights_only=True)
    assert resume["progress"]["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in resume["algorithm"]["model"].values())


def test_with_nonfinite_skip_the_bad_meta_step_is_undone_and_counted(maml_dir, tmp_path, monkeypatch):
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    cfg = tiny_config(spec)
    cfg["training"]["nonfinite"] = "skip"
    poison_meta_batch(monkeypatch, at_call=2)
    summary = train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)
    assert summary["nonfinite_skipped"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint(tmp_path / "run").values())


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_says_what_to_do(
        maml_dir, tmp_path, monkeypatch):
    import errno
    from gbml.io import TEMP_MARK
    real_save, saves = torch.save, {"n": 0}

    def save(obj, f):
        if Path(f.name).name.startswith(".resume.pt" + TEMP_MARK):   # the temporary resume.pt is written to
            saves["n"] += 1
            if saves["n"] == 2:    # the second resume checkpoint: half written, then the disk is full
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", save)
    spec = RunSpec("maml", "omniglot", 5, 1, 0)
    cfg = tiny_config(spec)
    cfg["algorithm"]["meta_iters"] = 6
    cfg["training"].update(checkpoint_every=2, curve_every=100)
    with pytest.raises(OSError, match=r"no space left.*iteration 4; the previous one \(iteration 2\) is kept"):
        train_run(spec, cfg, maml_dir, tmp_path / "run", progress=False)
    partial = tmp_path / "run.partial"
    assert sorted(p.name for p in partial.iterdir()) == ["resume.pt"]
    assert torch.load(partial / "resume.pt", weights_only=True)["progress"]["iteration"] == 2


def test_mamlpp_records_its_learned_inner_rates_at_every_epoch(maml_dir, tmp_path):
    spec = RunSpec("mamlpp", "omniglot", 5, 1, 0)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mamlpp"].update(meta_iters=4, iters_per_epoch=2, meta_batch=2, msl_epochs=1, first_order_epochs=1)
    params["training"].update(log_every=2, curve_tasks=2, threads=1)
    train_run(spec, resolved_run_config(params, spec), maml_dir, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    rates = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["inner_lrs"]
    assert [row["step"] for row in history] == [2, 4]   # one row per epoch
    steps = params["mamlpp"]["inner_steps"]
    assert {k for k in history[-1] if k.startswith("lslr/")} == {f"lslr/{n}/step{k + 1}" for n in rates for k in range(steps)}
    for name, values in rates.items():   # the last epoch's rows are the final rates
        assert [history[-1][f"lslr/{name}/step{k + 1}"] for k in range(steps)] == pytest.approx(values.tolist())
    assert history[0] != history[-1] and all(r != params["mamlpp"]["inner_lr"] for r in values.tolist()), "the rates were learned"
