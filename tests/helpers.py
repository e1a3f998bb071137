"""Small shared builders for the unit tests: a tiny float64 Conv4 and synthetic episodes."""

from __future__ import annotations

import torch

from gbml.data.tasks import Episode
from gbml.models.conv4 import Conv4


def tiny_model(ways: int = 3, seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(ways=ways, in_channels=1, image_size=8, hidden=3).double()


def random_episode(ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)

    def part(n):
        x = torch.rand(ways * n, 1, 8, 8, generator=g, dtype=torch.float64)
        y = torch.arange(ways).repeat_interleave(n)
        return x, y

    return Episode(*part(shots), *part(queries))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def adam_step_on_clamped(params, grad: torch.Tensor, lr: float, bound: float) -> torch.Tensor:
    """Independent computation of a clipped meta-update: torch.optim.Adam's first step on the
    flattened ``params`` with ``grad`` clamped to [-bound, bound]."""
    reference = torch.nn.Parameter(flat(p.detach() for p in params).clone())
    adam = torch.optim.Adam([reference], lr=lr)
    reference.grad = grad.clamp(-bound, bound)
    adam.step()
    return reference.detach()


def adapt_one(algo, episode: Episode, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``algo.adapt`` of one episode, as a stack of one task; the parameters without the task axis."""
    adapted = algo.adapt(episode.support_x[None], episode.support_y[None], None if generator is None else [generator])
    return {name: p[0] for name, p in adapted.items()}


def predict_one(algo, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``algo.predict`` of one task's inputs under one task's parameters (no task axis)."""
    return algo.predict({name: p[None] for name, p in params.items()}, x[None])[0]
