"""PNG plots of an evaluation: similarity histograms, threshold curves, a 2-D map, the worst queries.

Figures are built on matplotlib's object API with the Agg canvas, never pyplot, so plotting keeps
no global state, needs no display and is safe in any thread. Each PNG is written to a temporary
file and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from replearn.atomic import atomic_path
from replearn.evaluation.calibration import PairCurve, ThresholdChoice

DISPLAY_BINS = 100


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def occupied_bins(curve: PairCurve) -> tuple[int, int]:
    """First and one-past-last bin holding any pair: plots zoom there, since trained (or collapsed)
    models put nearly all pairs in a narrow band of similarities.

    >>> occupied_bins(PairCurve(np.linspace(-1, 1, 5), np.array([0, 1, 0, 0]), np.array([0, 0, 2, 0])))
    (1, 3)
    """
    occupied = np.flatnonzero(curve.positive_counts + curve.negative_counts)
    return (int(occupied[0]), int(occupied[-1]) + 1) if occupied.size else (0, len(curve.positive_counts))


def plot_similarity_histograms(curve: PairCurve, threshold: float, path: Path, title: str) -> None:
    """Same-class vs different-class pair similarities, each normalised to sum 1, with the threshold."""
    low, high = occupied_bins(curve)
    group = max(1, -(-(high - low) // DISPLAY_BINS))
    groups = -(-(high - low) // group)
    width = float(curve.edges[1] - curve.edges[0])
    edges = curve.edges[low] + width * group * np.arange(groups + 1)
    figure = new_figure(7, 4)
    axes = figure.add_subplot()
    for counts, label, colour in (
        (curve.positive_counts, "same class", "tab:green"),
        (curve.negative_counts, "different class", "tab:red"),
    ):
        padded = np.zeros(groups * group)
        part = counts[low : low + groups * group]
        padded[: len(part)] = part
        coarse = padded.reshape(groups, group).sum(axis=1)
        total = coarse.sum()
        axes.stairs(coarse / total if total else coarse, edges, fill=True, alpha=0.5, color=colour, label=label)
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set(xlabel="cosine similarity", ylabel="fraction of pairs", title=title)
    axes.legend()
    save_figure(figure, path)


def plot_threshold_curves(curve: PairCurve, choice: ThresholdChoice, path: Path, title: str) -> None:
    """Pairwise precision, recall and F1 of "similarity >= t means same class" against t."""
    low, high = occupied_bins(curve)
    shown = slice(max(0, low - 1), min(len(curve.thresholds), high + 1))
    figure = new_figure(7, 4)
    axes = figure.add_subplot()
    for values, label in ((curve.precision, "precision"), (curve.recall, "recall"), (curve.f1, "F1")):
        axes.plot(curve.thresholds[shown], values[shown], label=label)
    axes.axvline(choice.threshold, color="black", linestyle="--", label=f"chosen {choice.threshold:.3f}")
    axes.set(xlabel="threshold (cosine similarity)", ylabel="score", title=title, ylim=(0, 1.02))
    axes.legend()
    save_figure(figure, path)


def project_2d(embeddings: np.ndarray, method: Literal["tsne", "pca"], seed: int) -> np.ndarray:
    """(N, 2) coordinates for the map: t-SNE keeps neighbourhoods (seed 003), PCA is fast and linear.

    >>> project_2d(np.eye(4, 3), "pca", 0).shape
    (4, 2)
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(embeddings) < 3:
        return np.zeros((len(embeddings), 2))
    if method == "tsne" and len(embeddings) > 4:
        perplexity = min(30.0, (len(embeddings) - 1) / 3)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return np.asarray(tsne.fit_transform(embeddings))
    return np.asarray(PCA(n_components=2, random_state=seed).fit_transform(embeddings))


def plot_embedding_map(points: np.ndarray, labels: list[str], subsets: list[str], path: Path, title: str) -> None:
    """The 2-D map coloured by class; seen classes as dots, unseen as crosses. A legend up to 20 classes."""
    classes = sorted(set(labels))
    colour_of = {name: index % 20 for index, name in enumerate(classes)}
    figure = new_figure(8, 7)
    axes = figure.add_subplot()
    colours = np.array([colour_of[label] for label in labels])
    for subset, marker in (("seen", "o"), ("unseen", "x")):
        chosen = np.array([s == subset for s in subsets], dtype=bool)
        if chosen.any():
            axes.scatter(
                points[chosen, 0], points[chosen, 1], c=colours[chosen], cmap="tab20", vmin=0, vmax=19,
                marker=marker, s=14, linewidths=1.0,
            )  # fmt: skip
            axes.scatter([], [], marker=marker, color="black", s=14, label=f"{subset} classes")
    if len(classes) <= 20:
        for name in classes:
            axes.scatter([], [], color=colormaps["tab20"](colour_of[name]), label=name, s=14)
    axes.legend(fontsize="small", markerscale=1.5, loc="best", ncols=2 if len(classes) > 10 else 1)
    axes.set(title=title, xticks=[], yticks=[])
    save_figure(figure, path)


@dataclass(frozen=True)
class Neighbor:
    path: Path
    label: str
    similarity: float


@dataclass(frozen=True)
class WorstQuery:
    """One row of the worst-queries grid: the query and its nearest gallery images, nearest first."""

    path: Path
    label: str
    score: float  # the metric the rows are ranked by (AP@R)
    neighbors: list[Neighbor]


def plot_worst_queries(rows: list[WorstQuery], path: Path, title: str) -> None:
    """A grid: each row a query, then its nearest neighbours framed green (same class) or red (other class)."""
    columns = 1 + max(len(row.neighbors) for row in rows)
    figure = new_figure(1.6 * columns, 1.8 * len(rows))
    figure.suptitle(title)
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for axes_row, row in zip(grid, rows, strict=True):
        cells = [(row.path, f"query: {row.label}\nAP@R {row.score:.2f}", "tab:blue")]
        cells += [
            (n.path, f"{n.label}\ncos {n.similarity:.3f}", "tab:green" if n.label == row.label else "tab:red")
            for n in row.neighbors
        ]
        for axes in axes_row:
            axes.set_axis_off()
        for axes, (image_path, caption, colour) in zip(axes_row, cells, strict=False):
            with Image.open(image_path) as image:
                axes.imshow(np.asarray(image.convert("RGB")))
            axes.set_axis_on()
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(3)
            axes.set_title(caption, fontsize=7, color=colour)
    save_figure(figure, path)
