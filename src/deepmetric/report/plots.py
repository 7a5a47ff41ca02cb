"""Plots of a run (matplotlib, Agg): curves, t-SNE, retrieval grid, per-class recall@1, verification."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(records: list[dict], path) -> bool:
    """Training loss and validation metrics against steps; False when there is nothing to plot."""
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval" and r.get("split") != "test"]
    if any(not r.get("baseline") for r in evals):  # the step-0 baseline and the selection split's validations
        split = next(r["split"] for r in evals if not r.get("baseline"))
        evals = [r for r in evals if r["split"] == split]
    if not train and not evals:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if train:
        parts = [k for k in train[-1] if k not in ("type", "step", "epoch", "lr", "steps_per_s")]
        for k in parts:
            axes[0].plot([r["step"] for r in train if k in r], [r[k] for r in train if k in r], label=k)
        axes[0].set_xlabel("step")
        axes[0].set_title("training loss")
        axes[0].legend(fontsize=8)
    if evals:
        for k in ("recall@1", "map@r", "nmi", "fine/recall@1", "fine/map@r", "coarse/recall@1"):
            if k in evals[-1]:
                axes[1].plot([r["step"] for r in evals], [r[k] for r in evals], marker="o", label=k)
        if evals[0].get("baseline"):
            axes[1].axvline(0, color="#999", lw=0.8, ls=":")
            axes[1].annotate("before training", (0, 0), xycoords=("data", "axes fraction"), fontsize=7,
                             color="#666", xytext=(3, 3), textcoords="offset points")  # fmt: skip
        axes[1].set_xlabel("step")
        axes[1].set_title(f"{evals[-1]['split']} metrics")
        axes[1].legend(fontsize=8)
        axes[1].grid(alpha=0.3)
    _save(fig, path)
    return True


def tsne(embeddings: np.ndarray, labels: np.ndarray, names: dict | None, path, max_points: int, seed: int) -> None:
    """2-D t-SNE of (a seeded subsample of) the embeddings, coloured by class."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(labels))[:max_points]
    xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(5, len(idx) // 4))).fit_transform(
        embeddings[idx]
    )
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    classes = np.unique(labels[idx])
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "gist_ncar")
    for i, c in enumerate(classes):
        m = labels[idx] == c
        label = names.get(int(c), str(c)) if names else str(c)
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=6,
            color=cmap(i / max(1, len(classes) - 1)),
            label=label if len(classes) <= 20 else None,
        )
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(f"t-SNE of {len(idx)} test embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, path)


def coarse_class_plot(embeddings, fine, names: dict | None, title: str, path, seed: int) -> None:
    """t-SNE of one coarse class's embeddings coloured by fine label: modes apart, or collapsed into one blob."""
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(5, len(fine) // 4))).fit_transform(
        embeddings
    )
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, c in enumerate(np.unique(fine)):
        m = fine == c
        ax.scatter(xy[m, 0], xy[m, 1], s=7, color=plt.get_cmap("tab10")(i % 10),
                   label=names.get(int(c), str(c)) if names else str(c))  # fmt: skip
    ax.legend(markerscale=3, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, path)


def retrieval_grid(
    queries: list[np.ndarray], neighbours: list[list[np.ndarray]], correct: list[list[bool]], path,
    title: str = "queries and their nearest test neighbours (green: same class, red: other class)",
    row_labels: list[str] | None = None,
) -> None:  # fmt: skip
    """Each row: a query image, then its nearest neighbours framed green (same class) or red (other class);
    ``row_labels`` name the queries (default "query")."""
    rows, cols = len(queries), 1 + max(len(n) for n in neighbours)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.35 * rows))
    axes = np.atleast_2d(axes)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                img, colour = queries[r], "black"
                ax.set_ylabel(row_labels[r] if row_labels else "query", fontsize=7)
            elif c - 1 < len(neighbours[r]):
                img, colour = neighbours[r][c - 1], ("#1a9641" if correct[r][c - 1] else "#d7191c")
            else:
                ax.axis("off")
                continue
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(3)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def per_class_recall(values: dict[int, float], names: dict | None, path) -> None:
    classes = sorted(values, key=lambda c: values[c])
    shown = classes if len(classes) <= 40 else classes[:20] + classes[-20:]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(shown) + 1)))
    labels = [names.get(c, str(c)) if names else str(c) for c in shown]
    ax.barh(range(len(shown)), [values[c] for c in shown], color="#4575b4")
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("recall@1")
    title = "per-class recall@1" + (" (20 worst and 20 best classes)" if len(classes) > 40 else "")
    ax.set_title(title)
    _save(fig, path)


def verification(metrics: dict, positives: np.ndarray, negatives: np.ndarray, path) -> None:
    """ROC of same-class vs different-class pairs (log false match rate) with the equal error rate, and the distance
    histograms of positive and negative pairs with the best-F1 and FMR = 1e-2 thresholds."""
    fig, (roc, hist) = plt.subplots(1, 2, figsize=(11, 3.8))
    fpr, tpr = np.asarray(metrics["roc"]["fpr"]), np.asarray(metrics["roc"]["tpr"])
    shown = fpr > 0
    roc.plot(fpr[shown], tpr[shown], color="#4575b4")
    roc.set_xscale("log")
    roc.set_xlabel("false match rate (different-class pairs accepted)")
    roc.set_ylabel("true match rate")
    roc.axhline(1 - metrics["eer"], color="#999999", lw=0.8, ls=":")
    roc.set_title(f"ROC: EER {metrics['eer']:.3f}, AUC {metrics['roc_auc']:.3f}")
    bins = np.linspace(0, max(float(np.max(negatives, initial=0)), float(np.max(positives, initial=0)), 1e-6), 60)
    hist.hist(negatives, bins=bins, density=True, alpha=0.55, color="#d73027", label="different class")
    hist.hist(positives, bins=bins, density=True, alpha=0.55, color="#1a9850", label="same class")
    for key, style, name in (("best_f1_threshold", "-", "best F1"), ("threshold@fmr=0.01", "--", "FMR 1e-2")):
        if math.isfinite(metrics.get(key, math.nan)):
            hist.axvline(metrics[key], color="black", lw=0.9, ls=style, label=f"{name}: {metrics[key]:.3f}")
    hist.set_xlabel("distance")
    hist.set_title("pair distances (sampled)")
    hist.legend(fontsize=7)
    _save(fig, path)
