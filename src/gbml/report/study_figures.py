"""Figures of the papers' own analyses (``gbml.studies``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gbml.report.figures import save_figure_atomic  # noqa: E402

LABELS = {"maml": "MAML", "fomaml": "FOMAML", "anil": "ANIL", "mamlpp": "MAML++", "reptile": "Reptile",
          "transductive": "transductive", "non_transductive": "non-transductive"}


def similarity_bars(similarity: dict, path: Path) -> Path:
    """Raghu et al. (2020) Figure 2: per layer, the similarity of the representations before and
    after the inner loop (1 = unchanged), CCA and CKA side by side, one bar per algorithm and
    setting with its 95% interval over seeds x tasks."""
    series = [(f"{LABELS.get(a, a)} {s}", layers) for a, settings in similarity.items() for s, layers in settings.items()]
    layer_names = list(series[0][1]) if series else []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(layer_names))
    for ax, measure in zip(axes, ("cca", "cka")):
        for j, (label, layers) in enumerate(series):
            means = [layers[n][f"{measure}_mean"] for n in layer_names]
            halves = [layers[n][f"{measure}_ci95"] for n in layer_names]
            ax.bar(x + (j - (len(series) - 1) / 2) * width, means, width, yerr=halves, capsize=3, label=label)
        ax.set_xticks(x, layer_names)
        ax.set_ylim(0, 1.25)   # room for the legend above the bars
        ax.set_xlabel("layer")
        ax.set_title(f"{measure.upper()} similarity, before vs after the inner loop")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("similarity (1 = the inner loop changed nothing)")
    axes[0].legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def freezing_curves(freezing: dict, path: Path) -> Path:
    """Raghu et al. (2020) Table 1 as a figure: test accuracy with the first k conv layers frozen
    in the test-time inner loop (k = 0: as trained; 4: the head alone), with 95% intervals."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for algorithm, settings in freezing.items():
        for setting, modes in settings.items():
            for mode, by_k in modes.items():
                ks = sorted(by_k, key=int)
                means = np.array([100 * by_k[k]["mean"] for k in ks])
                halves = np.array([100 * by_k[k]["ci95"] for k in ks])
                line, = ax.plot([int(k) for k in ks], means, marker="o",
                                label=f"{LABELS.get(algorithm, algorithm)} {setting}, {LABELS.get(mode, mode)}")
                ax.fill_between([int(k) for k in ks], means - halves, means + halves, alpha=0.2, color=line.get_color())
    ax.set_xticks(range(5), ["none", "1", "1-2", "1-3", "1-4"])
    ax.set_xlabel("conv layers frozen in the test-time inner loop")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def gradient_combination_curves(curves: dict, cfg, path: Path) -> Path:
    """Nichol et al. (2018) Figure 3: held-out accuracy against meta-iterations, one line per
    inner-gradient combination (colour: the last gradient's index k; solid: a sum g1 + ... + gk,
    dashed: gk alone, dotted: another subset), with 95% intervals over seeds x tasks."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("viridis")
    for arm, points in curves.items():
        indices = [int(p[1:]) for p in arm.split("_")]
        k = max(indices)
        style = "-" if indices == list(range(1, k + 1)) and k > 1 else "--" if len(indices) == 1 else ":"
        its = np.array([p["iteration"] for p in points])
        means = np.array([100 * p["accuracy"] for p in points])
        halves = np.array([100 * p["ci95"] for p in points])
        colour = colours((k - 1) / max(3, k))
        ax.plot(its, means, style, color=colour, marker="o", markersize=3, label=" + ".join(arm.split("_")))
        ax.fill_between(its, means - halves, means + halves, color=colour, alpha=0.12)
    ax.axhline(100 / cfg.ways, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(f"held-out accuracy (%), {cfg.ways}-way {cfg.shots}-shot")
    ax.set_title(f"inner-loop gradient combinations ({cfg.eval_inner_iters} SGD steps at test time)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def overlap_curves(final: dict, cfg, path: Path) -> Path:
    """Nichol et al. (2018) Figure 4: final held-out accuracy against the number of inner
    iterations, one line per variant (Reptile, first-order MAML with a shared or a separate last
    minibatch), one panel per minibatch sampling, with 95% intervals over seeds x tasks."""
    samplings = list(cfg.samplings)
    fig, axes = plt.subplots(1, len(samplings), figsize=(5.5 * len(samplings), 4), sharey=True, squeeze=False)
    names = {"reptile": "Reptile", "foml_shared": "FOMAML, shared tail", "foml_separate": "FOMAML, separate tail"}
    for ax, sampling in zip(axes[0], samplings):
        for variant, by_sampling in final.items():
            by_k = by_sampling.get(sampling, {})
            ks = sorted(by_k, key=int)
            means = np.array([100 * by_k[k]["accuracy"] for k in ks])
            halves = np.array([100 * by_k[k]["ci95"] for k in ks])
            ax.errorbar([int(k) for k in ks], means, yerr=halves, marker="o", capsize=3, label=names.get(variant, variant))
        ax.set_xticks(list(cfg.inner_iters))
        ax.set_xlabel("inner iterations")
        ax.set_title(f"inner minibatches: {'cycling' if sampling == 'cycle' else 'with replacement'}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"held-out accuracy (%), {cfg.ways}-way {cfg.shots}-shot")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def taylor_errors(errors: dict, cfg, trained_alpha: float, path: Path) -> Path:
    """Nichol et al. (2018) section 5.1, measured: each k = 2 update's relative error against its
    expansion to zeroth order (dashed) and to first order (solid) against the inner rate, on
    log-log axes, 95% intervals over seeds x tasks x minibatch orders; the dotted line marks the
    rate the gradient-combination study trains with."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    names = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile"}
    for i, (name, points) in enumerate(errors.items()):
        alphas = np.array([p["alpha"] for p in points])
        for order, style in ((0, "--"), (1, "-")):
            means = np.array([p[f"error{order}"] for p in points])
            halves = np.nan_to_num(np.array([p[f"error{order}_ci95"] for p in points]))
            ax.plot(alphas, means, style, marker="o", markersize=3, color=f"C{i}",
                    label=f"{names.get(name, name)}: {'gbar only' if order == 0 else 'with the Hessian term'}")
            ax.fill_between(alphas, np.clip(means - halves, means * 1e-2, None), means + halves, color=f"C{i}", alpha=0.15)
    ax.axvline(trained_alpha, color="grey", linestyle=":", label=f"the gradient-combination study's rate ({trained_alpha:g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"inner learning rate alpha ({cfg.inner_loss} loss over a minibatch of {cfg.inner_batch})")
    ax.set_ylabel("|update - expansion| / |update|")
    ax.set_title("k = 2 updates against their section 5.1 expansion")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def instability_curves(histories: dict[tuple[str, int], list[dict]], cfg, path: Path) -> Path:
    """Antoniou et al. (2019) Figure 1, measured: the baseline's (MAML) and the fixed arm's
    (MAML++) training loss and validation accuracy over meta-training, one line per seed (the
    spread between seeds is the point), a colour per arm."""
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    styles = ["-", "--", ":", "-."]
    for colour, arm in zip(("C3", "C0"), (cfg.baseline, cfg.fixed)):
        for i, seed in enumerate(cfg.seeds):
            rows = histories[(arm, seed)]
            loss = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
            val = [(r["step"], 100 * r["val_acc"]) for r in rows if "val_acc" in r]
            style = styles[i % len(styles)]
            loss_ax.plot(*zip(*loss), style, color=colour, linewidth=1, label=f"{arm}, seed {seed}")
            if val:
                val_ax.plot(*zip(*val), style, marker="o", markersize=3, color=colour, label=f"{arm}, seed {seed}")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel(f"training query loss (mean of {cfg.log_every} meta-iterations)")
    val_ax.set_ylabel("validation accuracy (%), transductive")
    for ax in (loss_ax, val_ax):
        ax.set_xlabel("meta-iteration")
        ax.grid(alpha=0.3, which="both")
    val_ax.legend(fontsize=7)
    fig.suptitle(f"MAML vs MAML++ across seeds ({cfg.dataset} {cfg.ways}-way {cfg.shots}-shot): "
                 "one line per seed", fontsize=11)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def ablation_bars(metrics: dict, cfg, path: Path) -> Path:
    """The ablation, measured: each arm's test accuracy (bar: mean over seeds x tasks, with its
    95% interval; dots: the seeds' means), the baseline's mean as a dashed line."""
    fig, ax = plt.subplots(figsize=(1.6 * len(cfg.arms) + 2, 4.2))
    runs = metrics["runs"]
    for i, arm in enumerate(cfg.arms):
        r = metrics["arms"][arm]
        ax.bar(i, 100 * r["accuracy"], yerr=100 * r["ci95"], capsize=4, color="C3" if arm == cfg.baseline else "C0", alpha=0.6)
        seeds = [100 * runs[f"{arm}-seed{s}"]["test_accuracy"] for s in cfg.seeds]
        ax.plot([i] * len(seeds), seeds, "k.", label="a seed's mean" if i == 0 else None)
    ax.axhline(100 * metrics["arms"][cfg.baseline]["accuracy"], color="C3", linestyle="--", linewidth=1,
               label=f"{cfg.baseline} (baseline)")
    ax.set_xticks(range(len(cfg.arms)), cfg.arms, rotation=20, fontsize=8)
    low = min(100 * min(r["test_accuracy"] for r in runs.values()), 100 * min(a["accuracy"] - a["ci95"] for a in metrics["arms"].values()))
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_ylabel(f"test accuracy (%), {cfg.ways}-way {cfg.shots}-shot, transductive")
    ax.set_title("MAML++ switches one at a time (95% interval over seeds x tasks)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure_atomic(fig, path)
