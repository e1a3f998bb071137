"""Intervals over tasks and spread over seeds, the two statistics the papers report.

MAML (Finn et al.) reports a 95% confidence interval over test tasks; Reptile (Nichol et al.) and
ANIL (Raghu et al.) report the standard deviation over training seeds. Both are computed from the
per-task accuracies each evaluation stores.
"""

from __future__ import annotations

import math

import numpy as np

# Normal quantile for a two-sided 95% interval; with hundreds of tasks the t quantile is the same
# to three digits.
Z95 = 1.959963984540054


def mean_ci95(values) -> tuple[float, float]:
    """Mean and 95% confidence half-width of the mean (normal approximation)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    half = Z95 * x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else float("nan")
    return float(x.mean()), float(half)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan")
