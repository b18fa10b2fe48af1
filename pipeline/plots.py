"""Study figures (matplotlib, Agg): loss and Spearman curves with seed bands, sigma histograms, reliability."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dae.atomic import atomic_path
from dae.errors import UsageError
from dae.extras import require


def require_matplotlib():
    """pyplot on the Agg backend (files only, no display), or a one-line error naming the extra to install."""
    matplotlib = require("matplotlib", "drawing plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = require_matplotlib()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _labels(frame: pd.DataFrame, keys=("loss", "distribution", "reparam")) -> pd.Series:
    varied = [k for k in keys if k in frame and frame[k].astype(str).nunique() > 1] or [keys[0]]
    return frame[varied].astype(str).agg(" ".join, axis=1)


def _band(ax, epochs, values, label, color, log=False):
    """The mean over models (geometric on a log axis) and a band from the lowest to the highest model."""
    mid = np.exp(np.log(values).mean(0)) if log else values.mean(0)
    ax.plot(epochs, mid, color=color, label=f"{label} (n={len(values)})", lw=1.6)
    ax.fill_between(epochs, values.min(0), values.max(0), color=color, alpha=0.12, lw=0)


def plot_curves(curves: pd.DataFrame, metric: str, path, title: str, ylabel: str, log: bool = False) -> Path:
    """One line per configuration: the mean curve over seeds (and units) in a band spanning every seed.

    On a log axis, configurations whose curve is not always positive (an NLL can be) get a second panel on a
    symmetric log axis (linear within ±1).
    """
    plt = require_matplotlib()
    labels = _labels(curves)
    colors = plt.get_cmap("tab10")
    series = []
    for i, label in enumerate(dict.fromkeys(labels)):
        wide = curves[labels == label].pivot_table(index=["seed", "group", "fold"], columns="epoch", values=metric)
        series.append((label, colors(i % 10), wide.columns.to_numpy(), wide.to_numpy(dtype=float)))
    panels = [[s for s in series if not log or np.all(s[3] > 0)], [s for s in series if log and not np.all(s[3] > 0)]]
    panels = [p for p in panels if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        on_log = log and np.all([np.all(s[3] > 0) for s in panel])
        for label, color, epochs, values in panel:
            _band(ax, epochs, values, label, color, log=on_log)
        if on_log:
            ax.set_yscale("log")
        elif log:  # symmetric log: a first-epoch NLL in the thousands and a converged one below zero both show
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel if on_log or not log else ylabel.replace("(log scale)", "(symmetric log: not always > 0)"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_sigma_histograms(predictions: pd.DataFrame, path, title: str) -> Path:
    """Predicted sigma over the test videos (all seeds pooled), one panel per configuration, log-spaced bins."""
    plt = require_matplotlib()
    labels = _labels(predictions)
    sigma = predictions["sigma"].to_numpy(dtype=float)
    # configurations without a scored sigma (sup: nothing trained it) have no histogram
    configs = [c for c in dict.fromkeys(labels) if np.isfinite(sigma[(labels == c).to_numpy()]).any()]
    positive = sigma[np.isfinite(sigma) & (sigma > 0)]
    if len(positive) == 0:
        raise UsageError("no predicted sigma to plot (a point-estimate head?)")
    bins = np.geomspace(positive.min() * 0.9, positive.max() * 1.1, 40)
    cols = min(3, len(configs))
    rows = int(np.ceil(len(configs) / cols))
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, config in zip(axes.flat, configs):
        s = predictions.loc[labels == config, "sigma"].to_numpy(dtype=float)
        s = s[np.isfinite(s)]
        ax.hist(s, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlim(bins[0], bins[-1])
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{config}\nmedian {np.median(s):.3g}, p95/p5 {np.percentile(s, 95) / np.percentile(s, 5):.2f}",
                     fontsize=8)
        ax.set_xlabel("predicted sigma (score units)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(configs):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_reliability(table: pd.DataFrame, path, title: str) -> Path:
    """Empirical against nominal coverage of the central intervals, +-1 std over models; the diagonal is ideal."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--", label="ideal")
    colors = plt.get_cmap("tab10")
    for i, (config, part) in enumerate(table.groupby("config", sort=False)):
        x, y = part["nominal"].to_numpy(), part["empirical_mean"].to_numpy()
        std = np.nan_to_num(part["empirical_std"].to_numpy())
        ax.plot(x, y, marker="o", ms=3, color=colors(i % 10), label=config)
        ax.fill_between(x, np.clip(y - std, 0, 1), np.clip(y + std, 0, 1), color=colors(i % 10), alpha=0.15, lw=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("empirical coverage on the test set")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, Path(path))


def plot_predictions(predictions: pd.DataFrame, path, title: str) -> Path:
    """Predicted mu with its 90% interval against the true score, one point per test video (the first seed)."""
    plt = require_matplotlib()
    first = predictions[predictions["seed"] == predictions["seed"].min()].sort_values("score")
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    score, mu = first["score"].to_numpy(float), first["mu"].to_numpy(float)
    inside = (first["lo90"] <= first["score"]) & (first["score"] <= first["hi90"])
    ax.errorbar(score, mu, yerr=[mu - first["lo90"].to_numpy(float), first["hi90"].to_numpy(float) - mu], fmt="none",
                ecolor="tab:blue", alpha=0.25, lw=1)
    ax.scatter(score[inside], mu[inside], s=10, color="tab:blue", label=f"true score inside the 90% interval "
               f"({inside.mean():.0%})")
    ax.scatter(score[~inside], mu[~inside], s=12, color="tab:red", marker="x", label="outside")
    lo, hi = min(score.min(), mu.min()), max(score.max(), mu.max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="predicted = true")
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted mu, bar = 90% interval")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, Path(path))


def plot_seed_spread(curves: pd.DataFrame, path, title: str, metric: str = "test_spearman") -> Path:
    """The robustness figure: per configuration, the std over seeds of the score at each epoch, log-scale y."""
    plt = require_matplotlib()
    labels = _labels(curves)
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, label in enumerate(dict.fromkeys(labels)):
        wide = curves[labels == label].pivot_table(index=["seed", "group", "fold"], columns="epoch", values=metric)
        std = wide.std(axis=0, ddof=1).to_numpy(dtype=float)
        ax.plot(wide.columns.to_numpy(), np.where(std > 0, std, np.nan), color=colors(i % 10),
                label=f"{label} (n={len(wide)})", lw=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"std over seeds of the {metric.replace('_', ' ')} (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_study(result, folder) -> list[Path]:
    """All figures of a study into folder (created): curves when tracked, sigma histograms, reliability."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = str(result.rows["dataset"].iloc[0]) if len(result.rows) else ""
    name = f"{result.study} ({dataset})" if dataset else result.study
    paths = []
    if result.curves is not None and len(result.curves):
        paths.append(plot_curves(result.curves, "train_loss", folder / f"{result.study}_train_loss.png",
                                 f"training loss, {name}", "training loss (log scale)", log=True))
        for key in [c for c in result.curves.columns if c.endswith("_spearman")]:
            paths.append(plot_curves(result.curves, key, folder / f"{result.study}_{key}.png",
                                     f"{key.replace('_', ' ')} per epoch, {name}", "Spearman rank correlation"))
        if result.study == "robustness" and "test_spearman" in result.curves:
            paths.append(plot_seed_spread(result.curves, folder / f"{result.study}_seed_spread.png",
                                          f"seed-to-seed spread of the test Spearman, {name}"))
    paths.append(plot_sigma_histograms(result.predictions, folder / f"{result.study}_sigma_hist.png",
                                       f"predicted sigma over the test videos, {name}"))
    paths.append(plot_reliability(result.reliability, folder / f"{result.study}_reliability.png",
                                  f"reliability, {name}"))
    return paths
