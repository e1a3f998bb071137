"""Sine-wave regression tasks (Finn et al. 2017, section 5.1; Nichol et al. 2018, section 3).

A task is ``y = a * sin(x + b)`` with amplitude ``a ~ U[0.1, 5]`` and phase ``b ~ U[0, 2 pi]``
(Nichol et al.'s range; Finn et al. draw the phase from ``[0, pi]``), inputs ``x ~ U[-5, 5]``.
The learner sees ``shots`` (x, y) pairs (the support set) and is scored on the query set: either
``queries`` further random inputs (MAML's meta-training episodes, Finn et al.) or ``queries``
equally spaced points on [-5, 5], Nichol et al.'s discretisation of the L2 loss over the whole
interval (they use 50 points).

Sampling uses a dedicated ``torch.Generator``, so a task stream is reproducible from its seed and
the sampler position can be checkpointed, as for the image episodes (``gbml.data.tasks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gbml.data.tasks import Episode, SeededSampler

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, 2 * math.pi)
INPUT = (-5.0, 5.0)


@dataclass(frozen=True)
class SineTask:
    """One task: its true amplitude and phase (for plotting and checks) and its episode, whose
    inputs and targets are float32 of shape ``[n, 1]``."""

    amplitude: float
    phase: float
    episode: Episode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The task's true function."""
        return sine(x, self.amplitude, self.phase)


def sine(x: torch.Tensor, amplitude: float, phase: float) -> torch.Tensor:
    return amplitude * torch.sin(x + phase)


class SineTaskSampler(SeededSampler):
    """Draws sine tasks with ``shots`` support and ``queries`` query points each.

    Args:
        shots: K, support points per task, drawn uniformly from ``INPUT``.
        queries: query points per task (0 for Reptile's training tasks).
        seed: seeds the sampler's own generator.
        query_grid: query points equally spaced over ``INPUT`` (the evaluation loss of
            Nichol et al.) instead of drawn at random.
    """

    def __init__(self, shots: int, queries: int, seed: int, query_grid: bool = False):
        if shots < 1 or queries < 0:
            raise ValueError(f"need shots >= 1 and queries >= 0, got shots={shots}, queries={queries}")
        self.shots, self.queries, self.query_grid = shots, queries, query_grid
        super().__init__(seed)

    def uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, 1, generator=self.generator)

    def sample_task(self) -> SineTask:
        amplitude = float(self.uniform(1, *AMPLITUDE))
        phase = float(self.uniform(1, *PHASE))
        support_x = self.uniform(self.shots, *INPUT)
        if self.query_grid:
            query_x = torch.linspace(*INPUT, self.queries).unsqueeze(1)
        else:
            query_x = self.uniform(self.queries, *INPUT)
        episode = Episode(support_x, sine(support_x, amplitude, phase),
                          query_x, sine(query_x, amplitude, phase))
        return SineTask(amplitude, phase, episode)

    def sample(self) -> Episode:
        return self.sample_task().episode
