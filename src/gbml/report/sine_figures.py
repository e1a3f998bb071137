"""Figures of the sine-wave study (``gbml.sine``): Nichol et al. (2018) Figure 1's adaptation
panels, and the post-adaptation MSE against the number of inner steps (Finn et al. 2017,
Figure 3, left)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gbml.report.figures import save_figure_atomic  # noqa: E402


def adaptation_panels(x: np.ndarray, tasks: list[dict], predictions: dict[str, np.ndarray],
                      steps: list[int], path: Path) -> Path:
    """One row per task, one column per label (algorithm or random init).

    ``x`` is the dense input grid ``[n]``; each entry of ``tasks`` holds ``truth`` ``[n]``,
    ``support_x``, ``support_y`` ``[K]``, ``amplitude`` and ``phase``; ``predictions[label]`` is
    ``[tasks, len(steps), n]``, the prediction after ``steps[j]`` inner SGD steps. Colours run
    from blue (0 steps) to red (the last), as in the Reptile demo.
    """
    labels = list(predictions)
    rows, cols = len(tasks), len(labels)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), sharex=True, sharey="row",
                             squeeze=False)
    last = max(steps[-1], 1)
    for r, task in enumerate(tasks):
        for c, label in enumerate(labels):
            ax = axes[r, c]
            ax.plot(x, task["truth"], color="tab:green", lw=2.5, alpha=0.8, label="true")
            for j, step in enumerate(steps):
                frac = step / last
                ax.plot(x, predictions[label][r, j], color=(frac, 0.0, 1.0 - frac), lw=1.2,
                        label=f"after {step}")
            ax.plot(task["support_x"], task["support_y"], "x", color="k", ms=7, mew=2,
                    label=f"support (K={len(task['support_x'])})")
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(label)
            if c == 0:
                ax.set_ylabel(f"a={task['amplitude']:.2f}, b={task['phase']:.2f}\ny")
            if r == rows - 1:
                ax.set_xlabel("x")
        amplitude = task["amplitude"]
        axes[r, 0].set_ylim(-1.3 * amplitude - 1.0, 1.3 * amplitude + 1.0)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    fig.suptitle("Sine-wave regression: predictions after k inner SGD steps from each initialisation "
                 "(cf. Nichol et al. 2018, Fig. 1)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save_figure_atomic(fig, path)


def mse_curves(steps: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str,
               path: Path) -> Path:
    """Mean post-adaptation MSE against inner steps, one line per label, shaded 95% CI over test
    tasks (``curves[label] = (mean, ci95_half_width)``), log scale."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for colour, (label, (mean, ci)) in zip(plt.cm.tab10.colors, curves.items()):
        ax.plot(steps, mean, color=colour, marker="o", ms=3, label=label)
        # A log axis cannot show a band below zero; clip it just above.
        ax.fill_between(steps, np.maximum(mean - ci, mean * 1e-2), mean + ci, color=colour, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("inner SGD steps at test time")
    ax.set_ylabel("query MSE (mean, 95% CI over tasks)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
