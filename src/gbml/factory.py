"""Building a run's pieces from its resolved config: device, seeds, model, algorithm."""

from __future__ import annotations

import numpy as np
import torch

from gbml.algorithms.registry import ALGORITHMS
from gbml.config import RunSpec
from gbml.errors import ConfigError
from gbml.models.conv4 import Conv4


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} requested, but CUDA is not available here; "
                          "use device: auto (CUDA when present, else the CPU) or cpu")
    return torch.device(name)


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    deterministic_kernels()


def deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` for eager kernels -- the flag
    they read -- without that function's import of ``torch._inductor`` (to set the compiler's
    copy of the flag): ~2 s of every training, evaluation and study process's start on a 2-core
    CPU (benchmarks/startup.py), for a compiler gbml never calls."""
    torch._C._set_deterministic_algorithms(True, warn_only=True)


def build_model(model_cfg: dict, ways: int, image_shape: tuple[int, ...], bn_steps: int = 0) -> Conv4:
    channels, side = image_shape[0], image_shape[-1]
    return Conv4(ways=ways, in_channels=channels, image_size=side, bn_steps=bn_steps, **model_cfg)


def build_algorithm(spec: RunSpec, cfg: dict, image_shape: tuple[int, ...], device: torch.device):
    """Model and algorithm of one run from its resolved config (``resolved_run_config``). The
    algorithm's config comes first: it decides parts of the model (MAML++'s per-step batch norm)."""
    kind = cfg.get("base_algorithm", spec.algorithm)   # a variant runs its base algorithm's class
    if kind not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {kind!r}; known: {', '.join(ALGORITHMS)}")
    cls = ALGORITHMS[kind].algorithm
    algo_cfg = ALGORITHMS[kind].config(**cfg["algorithm"])
    model = build_model(cfg["model"], spec.ways, image_shape, **cls.model_kwargs(algo_cfg)).to(device)
    return cls(model, algo_cfg, shots=spec.shots, seed=spec.seed)
