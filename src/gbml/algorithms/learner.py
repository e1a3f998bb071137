"""What the training and evaluation loops need from an algorithm: the ``MetaLearner`` protocol,
with the defaults most algorithms keep, so that callers never probe for a method."""

from __future__ import annotations

import torch

from gbml.algorithms.core import Generators, Params
from gbml.data.tasks import Episode


class MetaLearner:
    """What the training and evaluation loops need from an algorithm, with the defaults most
    algorithms keep (a subclass overrides what it does differently, and callers never probe).
    Tasks come stacked (``Episode`` tensors and parameters with a leading task axis)."""

    #: (shots, queries) per class of the episodes ``meta_step`` consumes.
    train_episode_shape: tuple[int, int]
    meta_batch: int
    meta_iters: int
    #: How a meta-batch's tasks run: side by side in one stack ("batched"), or one after another
    #: as stacks of one ("serial": Reptile's chained Adam state). Recorded with every run.
    engine: str = "batched"
    #: Iterations between held-out curve points when the algorithm validates on its own schedule
    #: (MAML++: once per epoch); 0 leaves it to ``training.curve_every``.
    validate_every: int = 0
    #: How many best-validated checkpoints its test score ensembles (MAML++); 0: the final one.
    ensemble_top_n: int = 0

    @staticmethod
    def episode_shape(cfg, shots: int) -> tuple[int, int]:
        """(shots, queries) per class of the training episodes for a ``shots``-shot setting."""
        raise NotImplementedError

    @staticmethod
    def model_kwargs(cfg) -> dict:
        """What the algorithm's config decides of the model (MAML++: per-step batch norm)."""
        return {}

    def train_sampler(self, images: torch.Tensor, counts: torch.Tensor | None, seed: int):
        """The algorithm's own training stream, or None for ``meta_batch`` episodes of
        ``train_episode_shape`` (every meta-learner; the joint-training baseline has its own)."""
        return None

    def meta_step(self, tasks: Episode, iteration: int) -> dict[str, float]:
        """One outer update from a meta-batch of stacked tasks; returns what to log."""
        raise NotImplementedError

    def curve_metrics(self) -> dict[str, float]:
        """What else the algorithm records at each held-out curve point (MAML++: its learned rates)."""
        return {}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, generator: Generators) -> Params:
        """Test-time adaptation of a stack of tasks (``[T, n, ...]``) from the current
        initialisation, without changing it: parameters with a leading task axis. ``generator``
        (one stream, or one per task) drives any sampling inside the inner loop."""
        raise NotImplementedError

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Outputs of a stack of tasks under ``adapt``'s parameters: ``x`` is ``[T, n, ...]``, or
        ``[T, g, n, ...]`` with batch-norm statistics per group (non-transductive evaluation)."""
        return self.model.forward_tasks(params, x)

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError
