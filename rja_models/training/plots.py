"""PNG figures (matplotlib, Agg backend: no display needed): learning curves and predictions over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


def plot_learning_curves(history: Sequence[dict[str, Any]], names: Sequence[str], path: Path) -> None:
    """Training and validation loss, and validation CCC (per target and mean; training mean dotted), per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_ccc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training")
    if all("val_loss" in h for h in history):  # a run resumed from an older last.pt lacks it
        ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for key in [*names, "mean"]:
        ax_ccc.plot(epochs, [h["val"][key] for h in history], marker="o", label=key,
                    linestyle="--" if key == "mean" else "-")
    if all("train" in h for h in history):
        ax_ccc.plot(epochs, [h["train"]["mean"] for h in history], marker=".", linestyle=":", color="gray",
                    label="mean (training)")
    ax_ccc.set(xlabel="epoch", ylabel="CCC", title="CCC (validation; training mean dotted)")
    ax_ccc.legend()
    for ax in (ax_loss, ax_ccc):
        ax.grid(alpha=0.3)
        # Whole epochs only, also for a single epoch (the locator's default wants two ticks, so falls back).
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    _save(fig, path)


def plot_series(videos: dict[str, dict[str, Any]], names: Sequence[str], path: Path,
                xlabel: str = "frame", ylim: tuple[float, float] = (-1.0, 1.0)) -> None:
    """One row per video, one column per target: predictions (and the labels, where given) over time.

    `videos[name]` holds `"x"` [N] (frame index or seconds), `"pred"` [N, T], and optionally
    `"labels"` [N, T] with `"mask"` [N] (unlabelled frames are left out of the label curve),
    `"ccc"` {target: CCC} (shown in the titles) and `"no_face"` bool [N] (frames without a detected
    face, shaded). `ylim` is the targets' range, fixed so that plots compare.
    """
    fig, axes = plt.subplots(len(videos), len(names), figsize=(5 * len(names), 2.4 * len(videos)),
                             squeeze=False, sharey=True)
    for row, (video, s) in zip(axes, videos.items()):
        for t, (ax, name) in enumerate(zip(row, names)):
            if s.get("labels") is not None:
                truth = np.where(s["mask"], s["labels"][:, t], np.nan)
                ax.plot(s["x"], truth, color="black", linewidth=1.2, label="true")
            if s.get("no_face") is not None and np.any(s["no_face"]):
                ax.fill_between(s["x"], 0, 1, where=s["no_face"], step="mid", color="gray", alpha=0.25, linewidth=0,
                                transform=ax.get_xaxis_transform(), label="no face detected")
            ax.plot(s["x"], s["pred"][:, t], color="tab:red", linewidth=1.0, label="predicted")
            score = f" (CCC {s['ccc'][name]:.3f})" if s.get("ccc") else ""
            ax.set_title(f"{video}: {name}{score}", fontsize=9)
            ax.set(xlabel=xlabel, ylabel=name, ylim=ylim)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
