"""Building a run's pieces from its resolved config: device, seeds, model, algorithm."""

from __future__ import annotations

import numpy as np
import torch

from gbml.algorithms.anil import ANIL
from gbml.algorithms.maml import MAML
from gbml.algorithms.reptile import Reptile
from gbml.config import ALGORITHMS, RunSpec
from gbml.models.conv4 import Conv4


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(model_cfg: dict, ways: int, image_shape: tuple[int, ...]) -> Conv4:
    channels, side = image_shape[0], image_shape[-1]
    return Conv4(ways=ways, in_channels=channels, image_size=side, **model_cfg)


def build_algorithm(spec: RunSpec, algo_cfg: dict, model: torch.nn.Module):
    classes = {"maml": MAML, "anil": ANIL, "reptile": Reptile}
    if spec.algorithm not in classes:
        raise ValueError(f"unknown algorithm {spec.algorithm!r}; known: {', '.join(classes)}")
    cfg = ALGORITHMS[spec.algorithm](**algo_cfg)
    return classes[spec.algorithm](model, cfg, shots=spec.shots, seed=spec.seed)
