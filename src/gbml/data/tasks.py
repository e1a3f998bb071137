"""N-way K-shot episodes (Vinyals et al. 2016; Finn et al. 2017, section 3.1).

An episode draws ``ways`` classes from a split, relabels them 0..ways-1 in random order, and
draws ``shots`` support and ``queries`` query examples per class without overlap. Reptile's
training episodes are the same thing with ``shots = train_shots`` and no queries.

Training samples a stream: a dedicated ``torch.Generator``, so a run is reproducible from its
seed and the sampler position can be checkpointed. Evaluation samples *indexed* tasks
(``EpisodeSampler.tasks_at``): task ``i`` is drawn from a generator of its own, seeded from
``(seed, i)``, so it is the same task whatever else is drawn -- whichever chunks the tasks are
drawn in (they depend on the evaluation modes and the device), how many tasks are scored, on
every device -- and per-task results pair across runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class Episode:
    """One few-shot task. For classification, images are float in [0, 1], shape [n, C, H, W],
    and labels are 0..ways-1, grouped by class (all examples of label 0 first); for regression
    (``gbml.data.sine``) inputs and targets are float, shape [n, 1]."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def to(self, device: torch.device) -> "Episode":
        return Episode(*(t.to(device, non_blocking=True) for t in
                         (self.support_x, self.support_y, self.query_x, self.query_y)))

    def slice(self, start: int, stop: int) -> "Episode":
        """Tasks ``start:stop`` of a stacked ``Episode`` (views)."""
        return Episode(*(t[start:stop] for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


def stack_tasks(tasks: "Episode | Sequence[Episode]") -> Episode:
    """Episodes as one ``Episode`` whose tensors have a leading task axis (what the algorithms
    take); an already stacked ``Episode`` is returned as is."""
    if isinstance(tasks, Episode):
        return tasks
    return Episode(*(torch.stack(parts) for parts in zip(
        *((e.support_x, e.support_y, e.query_x, e.query_y) for e in tasks))))


def task_list(tasks: "Episode | Sequence[Episode]") -> list[Episode]:
    """Episodes one by one: unbinds a stacked ``Episode``."""
    if isinstance(tasks, Episode):
        return [Episode(*parts) for parts in zip(
            *(t.unbind(0) for t in (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)))]
    return list(tasks)


def task_seed(seed: int, index: int, stream: str) -> int:
    """A 63-bit seed for task ``index`` of ``stream`` (e.g. its episode, its adaptation's
    minibatches) under ``seed``: a hash, so neighbouring seeds and indices give unrelated streams."""
    digest = hashlib.sha256(f"{seed}/{stream}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def task_generators(seed: int, indices: Sequence[int], stream: str) -> list[torch.Generator]:
    """One CPU generator per task index (``task_seed``)."""
    return [torch.Generator().manual_seed(task_seed(seed, i, stream)) for i in indices]


class SeededSampler:
    """A task sampler driven by its own generator: ``sample()`` draws one episode; batches and
    the checkpointable position come from here."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> Episode:
        raise NotImplementedError

    def sample_batch(self, n: int) -> list[Episode]:
        return [self.sample() for _ in range(n)]

    def sample_tasks(self, n: int) -> Episode:
        """``n`` episodes stacked on a leading task axis (what the algorithms take)."""
        return stack_tasks(self.sample_batch(n))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())   # a CPU generator, whatever the device


class EpisodeSampler(SeededSampler):
    """Draws episodes from ``images``, a uint8 tensor [classes, examples, C, H, W]. ``counts``
    (optional, one per class) says how many leading examples of each class are real when
    classes differ in size (Mini-ImageNet from the ILSVRC byte ranges); the rest is padding."""

    def __init__(self, images: torch.Tensor, ways: int, shots: int, queries: int, seed: int,
                 counts: torch.Tensor | None = None):
        classes, examples = images.shape[:2]
        fewest = examples if counts is None else int(counts.min())
        if ways > classes:
            raise ValueError(f"ways={ways} exceeds the {classes} classes of this split")
        if shots + queries > fewest:
            raise ValueError(
                f"shots + queries = {shots + queries} exceeds the {fewest} examples of the smallest class")
        self.images, self.counts = images, None if counts is None else counts.cpu()
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed
        super().__init__(seed)

    def sample_tasks(self, n: int) -> Episode:
        """The stream's next ``n`` episodes, stacked on a leading task axis."""
        classes, examples = self.images.shape[:2]
        class_keys = torch.rand(n, classes, generator=self.generator)
        return self.episodes(class_keys, torch.rand(n, self.ways, examples, generator=self.generator))

    def tasks_at(self, indices: Sequence[int]) -> Episode:
        """Tasks ``indices`` of this sampler's seed, stacked: task ``i`` depends on the seed, the
        images, the episode shape and ``i`` alone (see the module docstring)."""
        classes, examples = self.images.shape[:2]
        keys = [(torch.rand(classes, generator=g), torch.rand(self.ways, examples, generator=g))
                for g in task_generators(self.seed, indices, "episode")]
        return self.episodes(*(torch.stack(k) for k in zip(*keys)))

    def episodes(self, class_keys: torch.Tensor, keys: torch.Tensor) -> Episode:
        """Episodes from uniform keys ([tasks, classes] and [tasks, ways, examples]), in one
        vectorised pass: class and example choices are argsorts of the keys (a random permutation
        per row), so no Python runs per task or per image. The keys come from CPU generators, so
        the tasks are the same on every device; the images are gathered where they live."""
        n, examples = len(keys), self.images.shape[1]
        per_class = self.shots + self.queries
        chosen = class_keys.argsort(dim=1)[:, : self.ways]
        if self.counts is not None:   # padding slots sort last, so they are never picked
            keys[torch.arange(examples) >= self.counts[chosen].unsqueeze(-1)] = 2.0
        picks = keys.argsort(dim=-1)[..., :per_class]
        device = self.images.device
        x = self.images[chosen.to(device).unsqueeze(-1), picks.to(device)].float().div_(255.0)
        y = torch.arange(self.ways, device=device).view(1, -1, 1).expand(n, -1, per_class)
        support, query = slice(0, self.shots), slice(self.shots, per_class)
        return Episode(
            support_x=x[:, :, support].flatten(1, 2), support_y=y[:, :, support].flatten(1),
            query_x=x[:, :, query].flatten(1, 2), query_y=y[:, :, query].flatten(1),
        )

    def sample(self) -> Episode:
        return task_list(self.sample_tasks(1))[0]

    def sample_batch(self, n: int) -> list[Episode]:
        return task_list(self.sample_tasks(n))


@dataclass(frozen=True)
class LabelledBatch:
    """A minibatch of plain supervised learning: images ``x`` [n, C, H, W] in [0, 1] and their
    classes' indices in the split, ``y`` [n]."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device) -> "LabelledBatch":
        return LabelledBatch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


class ClassBatchSampler(SeededSampler):
    """Minibatches drawn uniformly, with replacement, from all the examples of every class of
    ``images`` (uint8 [classes, examples, C, H, W]; ``counts`` as ``EpisodeSampler``), labelled
    with their class index: joint training on the union of the classes, the baseline the
    meta-learners are compared with (``gbml.algorithms.pretrain``). With replacement, the
    stream's position is its generator's state alone, so training resumes exactly."""

    def __init__(self, images: torch.Tensor, seed: int, counts: torch.Tensor | None = None):
        classes, examples = images.shape[:2]
        sizes = torch.full((classes,), examples) if counts is None else counts.cpu().long()
        self.images = images
        self.ends = sizes.cumsum(0)            # example i of the union lies in class searchsorted(ends, i, right)
        self.starts = self.ends - sizes
        super().__init__(seed)

    def sample_tasks(self, n: int) -> LabelledBatch:
        """The stream's next ``n`` examples (the training loop's name for its next batch)."""
        flat = torch.randint(int(self.ends[-1]), (n,), generator=self.generator)
        classes = torch.searchsorted(self.ends, flat, right=True)
        examples = flat - self.starts[classes]
        device = self.images.device
        x = self.images[classes.to(device), examples.to(device)].float().div_(255.0)
        return LabelledBatch(x, classes.to(device))

    def sample(self) -> LabelledBatch:
        return self.sample_tasks(1)
