"""Checkpoints of a training run: ``resume.pt`` (everything a killed run needs to continue bit
for bit, written atomically every ``training.checkpoint_every`` iterations) and the top-N
checkpoints by validation accuracy that MAML++'s test score ensembles. ``gbml.train`` says when
each is written and removed."""

from __future__ import annotations

import dataclasses
import errno
import heapq
import shutil
from pathlib import Path

import torch

from gbml.data.tasks import EpisodeSampler
from gbml.errors import GbmlError
from gbml.io import load_checkpoint, save_checkpoint, write_json_atomic


class TopCheckpoints:
    """Keeps, on disk, the ``n`` checkpoints with the highest validation accuracy seen so far
    (MAML++'s protocol: its test score is the ensemble of the best per-epoch models). Ties go to
    the earlier checkpoint."""

    def __init__(self, n: int, directory: Path):
        self.n, self.directory = n, directory
        self.kept: list[tuple[float, int]] = []   # a min-heap of (accuracy, -step)
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, step: int) -> Path:
        return self.directory / f"step{step:07d}.pt"

    def offer(self, step: int, accuracy: float, state: dict) -> None:
        entry = (accuracy, -step)
        if len(self.kept) == self.n and entry <= self.kept[0]:
            return
        save_checkpoint(self.path(step), state)
        if len(self.kept) == self.n:
            heapq.heappop(self.kept)   # its file goes at the next prune: a resume.pt may still list it
        heapq.heappush(self.kept, entry)

    def prune(self) -> None:
        """Delete the checkpoints no longer kept."""
        kept = {self.path(-neg).name for _, neg in self.kept}
        for path in self.directory.glob("step*.pt"):
            if path.name not in kept:
                path.unlink()

    def write_manifest(self) -> None:
        self.prune()
        members = [{"step": -neg, "val_acc": acc, "file": self.path(-neg).name}
                   for acc, neg in sorted(self.kept, reverse=True)]
        write_json_atomic(self.directory / "members.json", members)


@dataclasses.dataclass
class Progress:
    """Where the outer loop stands: what a resume checkpoint holds besides the algorithm."""
    iteration: int = 0                                   # meta-iterations done
    history: list[dict] = dataclasses.field(default_factory=list)
    window: list[dict] = dataclasses.field(default_factory=list)   # metrics since the last history row
    seconds: float = 0.0                                 # training wall time so far
    skipped: int = 0                                     # meta-steps undone for a non-finite loss


RESUME = "resume.pt"


class DiskFull(GbmlError, OSError):
    """No space left for a resume checkpoint; the message says which one is kept."""


class Saver:
    """Writes ``resume.pt`` every ``every`` iterations (0: only at the end, ``write``), atomically."""

    def __init__(self, directory: Path, key: str, run_id: str | None, algorithm, sampler: EpisodeSampler,
                 keeper: TopCheckpoints | None, every: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.key, self.run_id, self.every = directory, key, run_id, every
        self.algorithm, self.sampler, self.keeper = algorithm, sampler, keeper
        self.last: int | None = None   # the iteration of the newest resume.pt

    def __call__(self, state: Progress, final: bool) -> None:
        if not self.every or final or state.iteration % self.every:
            return
        self.write(state)

    def write(self, state: Progress) -> None:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint = {"key": self.key, "mlflow_run_id": self.run_id, "progress": dataclasses.asdict(state),
                      "algorithm": self.algorithm.state_dict(), "sampler": self.sampler.generator.get_state(),
                      "rng": rng, "keeper": list(self.keeper.kept) if self.keeper else []}
        try:
            save_checkpoint(self.directory / RESUME, checkpoint)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            kept = (f"the previous one (iteration {self.last}) is kept" if self.last
                    else "no earlier one exists")
            raise DiskFull(errno.ENOSPC, f"no space left on the device while writing the resume checkpoint "
                          f"{self.directory / RESUME} at iteration {state.iteration}; {kept}. Free space "
                          "(or raise training.checkpoint_every) and run the same command again") from err
        self.last = state.iteration
        if self.keeper:
            self.keeper.prune()   # only now may checkpoints this resume.pt no longer lists go


def load_resume(directory: Path, key: str) -> dict | None:
    """The resume checkpoint in ``directory`` (on the CPU: ``restore`` places each part) if it
    belongs to this run (same run key); else clear the directory (a half-started or foreign
    partial run) and return None."""
    path = directory / RESUME
    if path.is_file():
        state = load_checkpoint(path)
        if state.get("key") == key:
            return state
        print(f"{directory.name}: discarding {path}: it was written under another configuration, "
              "data or code (its run key differs); training starts over")
    shutil.rmtree(directory, ignore_errors=True)
    return None


def restore(checkpoint: dict, algorithm, sampler: EpisodeSampler, keeper: TopCheckpoints | None) -> None:
    algorithm.load_state_dict(checkpoint["algorithm"])
    sampler.generator.set_state(checkpoint["sampler"].cpu())   # generator states are CPU tensors
    torch.set_rng_state(checkpoint["rng"]["cpu"].cpu())
    if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in checkpoint["rng"]["cuda"]])
    if keeper:
        keeper.kept = [tuple(entry) for entry in checkpoint["keeper"]]
        heapq.heapify(keeper.kept)
