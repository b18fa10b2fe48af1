"""Figures of `dae ablate calibration` (matplotlib, Agg): reliability per head, PIT histograms, width against |error|."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dae.pipeline.plots import _save, require_matplotlib

METHOD_STYLE = {"none": ("tab:red", "none (raw)"), "scale": ("tab:orange", "scale"),
                "conformal": ("tab:blue", "conformal, adaptive (|y - mu| / sigma)"),
                "conformal-constant": ("tab:gray", "conformal, constant width (|y - mu|)")}


def _grid(plt, n, width=3.2, height=3.0):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_reliability(reliability, path) -> Path:
    """Nominal against empirical coverage of the central intervals, one panel per head, one line per calibrator
    (mean over models, bars: std over models); on the diagonal an interval covers what it says."""
    plt = require_matplotlib()
    heads = list(dict.fromkeys(reliability["head_label"]))
    fig, axes = _grid(plt, len(heads))
    for ax, head in zip(axes, heads):
        part = reliability[reliability["head_label"] == head]
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":")
        for method, (color, label) in METHOD_STYLE.items():
            m = part[part["method"] == method]
            if m.empty:
                continue
            ax.errorbar(m["nominal"], m["empirical_mean"], yerr=m["empirical_std"].fillna(0), color=color,
                        label=label, marker="o", ms=3, lw=1.2, capsize=2)
        ax.set_title(head, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("empirical coverage (test)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Reliability of the predicted intervals (calibrated on training rows only)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, Path(path))


def plot_pit(pit, path, bins: int = 10) -> Path:
    """PIT histograms (density; flat = calibrated), raw against scale-calibrated, one panel per head with a spread
    before or after calibration. Conformal gives intervals, not a density: its NLL/CRPS/PIT are scale's."""
    plt = require_matplotlib()
    heads = list(dict.fromkeys(pit["head_label"]))
    fig, axes = _grid(plt, len(heads))
    edges = np.linspace(0, 1, bins + 1)
    for ax, head in zip(axes, heads):
        part = pit[pit["head_label"] == head]
        for method in ("none", "scale"):
            values = part.loc[part["method"] == method, "pit"].to_numpy()
            if len(values) == 0:
                continue
            color, label = METHOD_STYLE[method]
            ax.hist(values, bins=edges, density=True, histtype="step", lw=1.8, color=color,
                    label=f"{label} (n={len(values)})")
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
        ax.set_title(head, fontsize=10)
        ax.set_xlabel("PIT = F(true score)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper center")
    fig.suptitle("PIT histograms on the test split (U-shape: too narrow; hump: too wide)")
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_width_vs_error(widths, path) -> Path:
    """Width of the 90% conformal interval against |y - mu| for every test prediction, adaptive (sigma-scaled)
    against constant width, one panel per head: if sigma is informative, wide intervals go with large errors."""
    plt = require_matplotlib()
    heads = list(dict.fromkeys(widths["head_label"]))
    fig, axes = _grid(plt, len(heads))
    for ax, head in zip(axes, heads):
        part = widths[widths["head_label"] == head]
        top = float(np.nanmax(part[["abs_error", "width90"]].to_numpy())) * 1.05
        for method in ("conformal-constant", "conformal"):
            m = part[part["method"] == method]
            if m.empty:
                continue
            color, label = METHOD_STYLE[method]
            ax.scatter(m["abs_error"], m["width90"], s=10, alpha=0.5, color=color, lw=0,
                       label=f"{label}: mean {m['width90'].mean():.1f}")
        ax.plot([0, top], [0, 2 * top], color="black", lw=0.8, ls=":", label="width = 2 |error| (edge of cover)")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top * 2)
        ax.set_title(head, fontsize=10)
        ax.set_xlabel("|true - mu| (score units)")
        ax.set_ylabel("90% interval width")
        ax.legend(fontsize=7, loc="upper left", markerscale=2.5)
    fig.suptitle("90% conformal interval width against the error it has to cover")
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_calibration_study(study, folder) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [plot_reliability(study.reliability, folder / "calibration_reliability.png")]
    if len(study.pit):
        paths.append(plot_pit(study.pit, folder / "calibration_pit.png"))
    if len(study.widths):
        paths.append(plot_width_vs_error(study.widths, folder / "calibration_width_vs_error.png"))
    return paths
