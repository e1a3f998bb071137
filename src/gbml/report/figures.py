"""Figures for reports/: the meta-training learning curves, from MLflow metric histories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure_atomic(fig, path: Path, dpi: int = 110) -> Path:
    """Save ``fig`` to a temporary sibling, close it, then rename onto ``path``."""
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], title: str, path: Path) -> Path:
    """``curves[label][metric]`` holds one ``(step, value)`` history per seed, under keys
    ``"<metric>/<seed>"``. Plots the seed mean with a min-max band for the training accuracy and
    the held-out accuracy, one colour per label (algorithm and setting)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for colour, (label, histories) in zip(plt.cm.tab10.colors, sorted(curves.items())):
        for ax, metric in zip(axes, ("train_acc", "val_acc")):
            series = [h for key, h in histories.items() if key.startswith(metric + "/") and h]
            if not series:
                continue
            steps = np.array([s for s, _ in series[0]])
            n = min(len(h) for h in series)
            values = np.array([[v for _, v in h[:n]] for h in series]) * 100
            ax.plot(steps[:n], values.mean(0), color=colour, label=f"{label} ({len(series)} seed{'s' if len(series) != 1 else ''})")
            if len(series) > 1:
                ax.fill_between(steps[:n], values.min(0), values.max(0), color=colour, alpha=0.2)
    axes[0].set_title("meta-training tasks (MAML family: queries after adaptation;\nReptile: last inner minibatch)", fontsize=10)
    axes[1].set_title("held-out tasks (transductive, during training)")
    for ax in axes:
        ax.set_xlabel("meta-iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
