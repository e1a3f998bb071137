"""Process-level speed settings for training and evaluation, each measured to help
(benchmarks/compare.py, README "Speed").

* ``tune_allocator``: glibc hands large blocks back to the operating system after each use, so
  every meta-iteration of a big batch page-faults its activations in again (measured: ~40% of a
  batch-2560 step). Keeping freed memory in the process removes that cost.
* ``configure_process``: the above, and cuDNN's autotuner on CUDA.
* ``autocast``: ``training.autocast``, mixed precision on CUDA (none by default: reproduction
  runs compute in float32).
* ``peak_memory_mb``: what runs report as their peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import contextlib
import os
import resource

import torch

from gbml.errors import ConfigError

AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse: no ``mmap`` for large blocks (each would be
    unmapped on free and faulted in again) and no trimming of the heap. Does nothing with
    another allocator preloaded (``LD_PRELOAD``, e.g. mimalloc), off glibc, or with
    ``GBML_TUNE_ALLOCATOR=0``. Returns whether it applied."""
    if os.environ.get("GBML_TUNE_ALLOCATOR", "1") == "0" or os.environ.get("LD_PRELOAD"):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20)))


def configure_process(device: torch.device) -> None:
    """What a training or evaluation process sets before its first tensor: the allocator and,
    on CUDA, cuDNN's autotuner (task shapes repeat every iteration, so tuning pays once)."""
    tune_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: the CUDA caching allocator's peak on a GPU, the
    resident set's high-water mark (``ru_maxrss``, kB on Linux) on the CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def autocast(device: torch.device, precision: str = "none") -> contextlib.AbstractContextManager:
    """``training.autocast`` for the training and evaluation loops: ``torch.autocast`` on CUDA
    with bfloat16 or float16 (parameters, optimiser states and losses stay float32), or nothing
    with "none". bfloat16 keeps float32's range; float16 runs without loss scaling, so very
    small gradients can underflow -- prefer bf16 where the GPU has it. A CPU run with anything
    but "none" is refused: this CPU has no fast half-precision convolutions, and a silent float32
    fallback would record a precision the run did not use."""
    if precision not in AUTOCAST:
        raise ConfigError(f"training.autocast must be one of {', '.join(AUTOCAST)}, got {precision!r}")
    if precision == "none":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ConfigError(f"training.autocast: {precision} is mixed precision on CUDA, but this run is on "
                         f"{device.type}; set training.autocast: none (or run on a GPU)")
    return torch.autocast("cuda", dtype=AUTOCAST[precision])
