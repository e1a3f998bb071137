"""Figures for reports/: the meta-training learning curves, from MLflow metric histories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gbml.io import write_atomic  # noqa: E402


def save_figure_atomic(fig, path: Path, dpi: int = 110) -> Path:
    """Save ``fig`` atomically onto ``path`` and close it."""
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        plt.close(fig)
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


def run_learning_curve(history: list[dict], name: str, path: Path) -> Path:
    """One training run's curve (``history.json`` rows), as ``learning_curves`` draws a grid's."""
    series = {f"{metric}/0": [(r["step"], r[metric]) for r in history if metric in r]
              for metric in ("train_acc", "val_acc")}
    return learning_curves({name: series}, f"{name}: learning curve", path)


def _cell_label(r) -> str:
    return f"{r['algorithm']} {r['dataset']} {r['ways']}w{r['shots']}s"


def _spread(r) -> float:
    """Error bar for a cell: std over seeds when there are several, else the CI over tasks."""
    return r["std_over_seeds_pct"] if r["seeds"] >= 2 else r["mean_ci95_over_tasks_pct"]


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def accuracy_vs_paper(summary, path: Path) -> Path:
    """Ours beside the paper for every cell that has a published number (bars with their ±)."""
    cells = summary[~summary["paper_accuracy_pct"].isna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * max(len(cells), 2)))
    if cells.empty:
        _no_data(ax, "No cell of this grid has a published counterpart.")
    else:
        y = np.arange(len(cells))
        labels = [f"{_cell_label(r)} {r['mode'].replace('_', '-')}" for _, r in cells.iterrows()]
        ax.barh(y - 0.2, cells["accuracy_pct"], 0.4, xerr=[_spread(r) for _, r in cells.iterrows()],
                label="ours (± std over seeds, or 95% CI over tasks for 1 seed)", color="tab:blue", capsize=3)
        ax.barh(y + 0.2, cells["paper_accuracy_pct"], 0.4, xerr=cells["paper_plus_minus_pct"].fillna(0),
                label="paper (± as published)", color="tab:grey", capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        low = float(min(cells["accuracy_pct"].min(), cells["paper_accuracy_pct"].min()))
        ax.set_xlim(max(0.0, low - 10), 100)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Ours vs published")
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def transduction_comparison(summary, modes: list[str], path: Path) -> Path:
    """Each cell's accuracy under every evaluation mode (transductive, non-transductive, nil)."""
    keys = summary[["algorithm", "dataset", "ways", "shots"]].drop_duplicates().reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) + 2), 4))
    x, width = np.arange(len(keys)), 0.8 / max(len(modes), 1)
    index = summary.set_index(["algorithm", "dataset", "ways", "shots", "mode"])
    for i, (mode, colour) in enumerate(zip(modes, plt.cm.Set2.colors)):
        found = [index.loc[(*k, mode)] if (*k, mode) in index.index else None for k in keys.itertuples(index=False)]
        acc = [r["accuracy_pct"] if r is not None else np.nan for r in found]
        err = [_spread(r) if r is not None else 0 for r in found]
        ax.bar(x + (i - (len(modes) - 1) / 2) * width, acc, width, yerr=err, capsize=3, color=colour,
               label=mode.replace("_", "-"))
    ax.set_xticks(x, [_cell_label(k) for _, k in keys.iterrows()], rotation=20, ha="right", fontsize=8)
    low = float(np.nanmin(summary["accuracy_pct"])) if len(summary) else 0.0
    ax.set_ylim(max(0.0, low - 10), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Evaluation modes (error bars: std over seeds, or 95% CI over tasks for 1 seed)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def lslr_heatmaps(rates: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """MAML++'s learned inner learning rates: per setting a heat map of layer x inner step
    (``rates[setting][parameter] = per-step rates``, averaged over seeds by the caller)."""
    n = max(len(rates), 1)
    height = max((len(r) for r in rates.values()), default=4)
    fig, axes = plt.subplots(1, n, figsize=(max(7.0, 4.5 * n), 1.5 + 0.35 * height), squeeze=False)
    if not rates:
        _no_data(axes[0, 0], "No MAML++ run with learned per-step learning rates (LSLR) in this grid.")
    for ax, (setting, layers) in zip(axes[0], sorted(rates.items())):
        names = list(layers)
        grid = np.stack([layers[name] for name in names])
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(grid.shape[1]), [str(k + 1) for k in range(grid.shape[1])])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("inner step")
        ax.set_title(setting, fontsize=9)
        middle = (grid.min() + grid.max()) / 2
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=6,
                    color="w" if value < middle else "k")
        fig.colorbar(image, ax=ax, label="learned inner learning rate")
    fig.suptitle("MAML++ LSLR: learned per-layer, per-step inner learning rates", fontsize=11)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def lslr_over_training(rates: dict[str, dict[int, dict[str, list[tuple[int, float]]]]], path: Path) -> Path:
    """MAML++'s learned inner rates at the end of each epoch: a row of panels per setting, one panel
    per inner step; a colour per adapted tensor, a line style per seed (``rates[setting][seed]
    ["<tensor>/step<k>"] = [(iteration, rate), ...]``)."""
    settings = sorted(rates)
    steps = sorted({key.rsplit("/", 1)[1] for runs in rates.values() for series in runs.values() for key in series},
                   key=lambda s: int(s.removeprefix("step"))) or ["step1"]
    fig, axes = plt.subplots(max(len(settings), 1), len(steps), figsize=(3.8 * len(steps) + 2.5, 3.2 * max(len(settings), 1)),
                             squeeze=False, sharey="row")
    if not settings:
        _no_data(axes[0, 0], "No MAML++ run with learned per-step learning rates (LSLR) in this grid.")
    styles = ["-", "--", ":", "-."]
    for row, setting in zip(axes, settings):
        tensors = sorted({key.rsplit("/", 1)[0] for series in rates[setting].values() for key in series})
        colours = dict(zip(tensors, plt.cm.tab10.colors * 3))
        for s_index, (seed, series) in enumerate(sorted(rates[setting].items())):
            for key, history in series.items():
                tensor, step = key.rsplit("/", 1)
                ax = row[steps.index(step)]
                ax.plot([i for i, _ in history], [v for _, v in history], styles[s_index % len(styles)], marker=".",
                        color=colours[tensor], label=f"{tensor}, seed {seed}" if step == steps[-1] else None)
        for ax, step in zip(row, steps):
            ax.set_title(f"{setting}\ninner step {step.removeprefix('step')}", fontsize=8)
            ax.set_xlabel("meta-iteration (end of epoch)")
            ax.grid(alpha=0.3)
        row[0].set_ylabel("learned inner learning rate")
        row[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("MAML++ LSLR over training: colour = adapted tensor, line style = seed", fontsize=11)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
