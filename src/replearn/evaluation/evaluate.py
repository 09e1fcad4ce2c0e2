"""The `evaluate` stage: embed a preprocessed folder, score retrieval on seen and unseen classes, calibrate.

Protocols (per subset, seen and unseen classes separately):
- test vs train: test images query a gallery of train images (seed 002), keys `<subset>/<metric>`;
- leave-one-out: every test image queries the other test images ("A Metric Learning Reality Check"),
  keys `<subset>/loo/<metric>`.
Micro averages (over queries) carry the plain name, macro averages (over classes) `macro/` before it.
The precision drop is seen minus unseen precision@1: how much worse the model does on classes it
never trained on. The pair threshold (same class at or above it) is calibrated on the val split and
checked on test pairs; the cluster stage's threshold and Louvain resolution are calibrated together on
the same images, at or below it, and checked as clusters of each test subset
(`<subset>/clusters/<metric>`). That calibration is the cluster stage's (clustering/calibration.py),
so `evaluate` takes it as a function (`calibrate_clusters`), which stages/evaluate.py passes in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Group
from rich.text import Text

from replearn.artifacts.threshold import THRESHOLD_FILE, write_threshold
from replearn.atomic import atomic_directory, write_json_atomic, write_text_atomic
from replearn.config import ClusterConfig, Config, EvaluateConfig
from replearn.console import results_table
from replearn.data.splits import SPLITS_FILE, SUBSETS, read_splits
from replearn.errors import UserError
from replearn.evaluation.calibration import PairCurve, ThresholdChoice, choose_threshold, count_pairs, score_threshold
from replearn.evaluation.embedding import embed_files, open_model
from replearn.evaluation.kmeans import cluster_kmeans
from replearn.evaluation.metrics import score_clustering
from replearn.evaluation.plots import (
    Neighbor,
    WorstQuery,
    occupied_bins,
    plot_embedding_map,
    plot_similarity_histograms,
    plot_threshold_curves,
    plot_worst_queries,
    project_2d,
)
from replearn.evaluation.retrieval import RetrievalScores, score_retrieval

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"
THRESHOLD_CURVE_FILE = "threshold_curve.csv"
PLOTS_DIR = "plots"
# The order a reader wants them in: how the pairs separate, the threshold chosen on them, the map, the failures.
PLOT_FILES = (
    "similarity_histograms.png",
    "threshold_curves.png",
    "embedding_map.png",
    "worst_queries_seen.png",
    "worst_queries_unseen.png",
)
# Per subset (seen, unseen): what the results table shows and the dashboard gets as step metadata.
SUBSET_HEADLINE = ("precision_at_1", "recall_at_4", "map_at_r", "knn_accuracy", "loo/precision_at_1", "nmi")
OVERALL_HEADLINE = (
    "precision_drop",
    "threshold",
    "threshold/f1",
    "cluster/threshold",
    "cluster/resolution",
    "groups/test_in_train",
)


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The few numbers a reader looks at first, of those `metrics` holds; the rest stay in metrics.json.

    >>> headline_metrics({"seen/precision_at_1": 0.9, "seen/gallery": 40.0, "threshold": 0.5})
    {'seen/precision_at_1': 0.9, 'threshold': 0.5}
    """
    keys = [f"{subset}/{key}" for subset in SUBSETS for key in SUBSET_HEADLINE] + list(OVERALL_HEADLINE)
    return {key: metrics[key] for key in keys if key in metrics}


@dataclass
class EvaluationResult:
    out_dir: Path
    metrics: dict[str, float]
    threshold: float  # pairs: two images are the same class at or above it (compare, cluster.method components)
    cluster_threshold: float  # the Louvain graph's pruning, calibrated with the resolution
    resolution: float

    @property
    def plots(self) -> list[Path]:
        """The PNG plots written, in PLOT_FILES order (the worst queries of a subset without test images are not)."""
        return [self.out_dir / PLOTS_DIR / name for name in PLOT_FILES if (self.out_dir / PLOTS_DIR / name).is_file()]

    def __rich__(self) -> Group:
        """The headline metrics of each subset, the seen-unseen drop, and the calibrated values."""
        rows = []
        for subset in SUBSETS:
            values = [self.metrics.get(f"{subset}/{key}") for key in SUBSET_HEADLINE]
            if any(value is not None for value in values):
                rows.append((subset, *("-" if value is None else f"{value:.3f}" for value in values)))
        table = results_table(
            f"evaluation in {self.out_dir}", ("classes", "P@1", "R@4", "MAP@R", "kNN acc", "LOO P@1", "NMI"), *rows
        )
        lines = []
        if "precision_drop" in self.metrics:
            lines.append(Text(f"precision drop, seen - unseen P@1: {self.metrics['precision_drop']:.3f}"))
        lines.append(
            Text(
                f"threshold {self.threshold:.4f} (pairwise F1 {self.metrics.get('threshold/f1', float('nan')):.3f}); "
                f"clusters: threshold {self.cluster_threshold:.4f}, resolution {self.resolution:g}; "
                f"in {self.out_dir / THRESHOLD_FILE}"
            )
        )
        return Group(table, *lines)


@dataclass(frozen=True)
class ClusterCalibration:
    """The cluster stage's threshold and resolution, the val F1 they gave, and the cluster metrics to report."""

    threshold: float
    resolution: float
    f1: float | None  # None when the calibration images could not score a choice
    metrics: dict[str, float]


# (embeddings, labels, pair threshold, cluster config, calibration split name, {subset: (embeddings, labels)})
CalibrateClusters = Callable[
    [np.ndarray, np.ndarray, float, ClusterConfig, str, dict[str, tuple[np.ndarray, np.ndarray]]], ClusterCalibration
]


@dataclass
class SplitData:
    """Everything the stage knows about the labelled images, row-aligned with the embeddings."""

    frame: pd.DataFrame  # splits.csv
    embeddings: np.ndarray  # (N, D) unit rows
    codes: np.ndarray  # (N,) class index into `classes`
    classes: np.ndarray  # class names, sorted
    root: Path

    def rows(self, split: str, subset: str | None = None) -> np.ndarray:
        chosen = self.frame["split"] == split
        if subset is not None:
            chosen &= self.frame["subset"] == subset
        return np.flatnonzero(chosen.to_numpy())

    def path(self, row: int) -> Path:
        return self.root / str(self.frame["path"].iloc[row])


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of `rows`, a seeded sample in the original order, so reruns pick the same ones.

    >>> sample_rows(np.arange(10), 3, seed=0).tolist() == sample_rows(np.arange(10), 3, seed=0).tolist()
    True
    """
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def load_split_data(config: Config, model_path: Path, preprocessed_dir: Path) -> SplitData:
    frame = read_splits(preprocessed_dir)
    if frame.empty:
        raise UserError(f"{preprocessed_dir / SPLITS_FILE} lists no images")
    paths = [preprocessed_dir / p for p in frame["path"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} images listed in {preprocessed_dir / SPLITS_FILE} are missing, e.g. {missing[0]}; "
            "rerun `replearn preprocess`"
        )
    model = open_model(model_path, config)
    embeddings = embed_files(model.embedder, paths, config.evaluate.batch_size, f"embedding {preprocessed_dir.name}")
    classes, codes = np.unique(frame["label"].to_numpy(dtype=str), return_inverse=True)
    return SplitData(frame, embeddings, codes, classes, preprocessed_dir)


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{name}": value for name, value in values.items()}


def score_protocol(
    data: SplitData, queries: np.ndarray, gallery: np.ndarray, leave_one_out: bool, settings: EvaluateConfig, name: str
) -> RetrievalScores:
    return score_retrieval(
        data.embeddings[queries],
        data.codes[queries],
        data.embeddings[gallery],
        data.codes[gallery],
        leave_one_out=leave_one_out,
        recall_at=settings.recall_at,
        knn_k=settings.knn_k,
        keep_neighbors=settings.worst_neighbors,
        memory_mb=settings.memory_mb,
        description=name,
    )


def per_class_rows(data: SplitData, scores: RetrievalScores, subset: str, protocol: str) -> pd.DataFrame:
    table = scores.per_class()
    table.insert(0, "protocol", protocol)
    table.insert(0, "subset", subset)
    table["class"] = data.classes[table["class"].to_numpy()]
    return table


def find_worst_queries(
    data: SplitData, scores: RetrievalScores, queries: np.ndarray, gallery: np.ndarray, count: int
) -> list[WorstQuery]:
    """The queries with the lowest AP@R (then precision@1), with their nearest gallery images."""
    counted = np.flatnonzero(~scores.lone)
    order = np.lexsort((scores.values["precision_at_1"][counted], scores.values["map_at_r"][counted]))
    rows = []
    for position in counted[order[:count]]:
        neighbors = [
            Neighbor(data.path(gallery[j]), str(data.classes[data.codes[gallery[j]]]), float(similarity))
            for j, similarity in zip(scores.neighbors[position], scores.similarities[position], strict=True)
        ]
        query = queries[position]
        label = str(data.classes[data.codes[query]])
        rows.append(WorstQuery(data.path(query), label, float(scores.values["map_at_r"][position]), neighbors))
    return rows


WIDE_METRICS = ("precision_at_1", "map_at_r")


def score_subset(
    data: SplitData, subset: str, settings: EvaluateConfig
) -> tuple[dict[str, float], list[pd.DataFrame], list[WorstQuery]]:
    """Both protocols and the k-means NMI/AMI for one subset's test images."""
    test, train = data.rows("test", subset), data.rows("train", subset)
    metrics: dict[str, float] = {"gallery": float(len(train))}
    tables: list[pd.DataFrame] = []
    worst: list[WorstQuery] = []
    if len(train):
        scores = score_protocol(data, test, train, False, settings, f"{subset}: test vs train")
        metrics |= scores.summarise()
        tables.append(per_class_rows(data, scores, subset, "test_vs_train"))
        worst = find_worst_queries(data, scores, test, train, settings.worst_queries)
    every_train = data.rows("train")
    if len(train) and len(every_train) > len(train):
        # Stricter: the other subset's classes compete too, as they do when new images are clustered.
        wide = score_protocol(data, test, every_train, False, settings, f"{subset}: test vs every train image")
        metrics |= {f"all_gallery/{key}": value for key, value in wide.summarise().items() if key in WIDE_METRICS}
    loo = score_protocol(data, test, test, True, settings, f"{subset}: leave-one-out")
    metrics |= prefixed("loo/", loo.summarise())
    tables.append(per_class_rows(data, loo, subset, "leave_one_out"))
    if not worst:
        worst = find_worst_queries(data, loo, test, test, settings.worst_queries)
    test_classes = len(np.unique(data.codes[test]))
    metrics["classes"] = float(test_classes)
    cluster_ids = cluster_kmeans(data.embeddings[test], test_classes, seed=settings.seed)
    metrics |= score_clustering(data.codes[test], cluster_ids)
    return metrics, tables, worst


def calibrate(data: SplitData, settings: EvaluateConfig) -> tuple[str, np.ndarray, PairCurve, ThresholdChoice]:
    """Count val pairs and choose the threshold; without usable val images, fall back to train with a warning."""
    for split in ("val", "train"):
        rows = sample_rows(data.rows(split), settings.calibration_max_images, settings.seed)
        if len(rows) < 2:
            continue
        curve = count_pairs(data.embeddings[rows], data.codes[rows], settings.threshold_bins, settings.memory_mb)
        if curve.positive_counts.sum() == 0:
            continue
        if split != "val":
            log.warning("the val split has no two images of one class; calibrating the threshold on train (biased)")
        choice = choose_threshold(curve, settings.threshold_objective, settings.target_precision)
        return split, rows, curve, choice
    raise UserError(f"{data.root / SPLITS_FILE}: no split has two images of one class to calibrate a threshold on")


def score_test_pairs(data: SplitData, subset: str, threshold: float, settings: EvaluateConfig) -> dict[str, float]:
    """Pairwise precision/recall/F1 of the calibrated threshold on one subset's test images."""
    rows = sample_rows(data.rows("test", subset), settings.calibration_max_images, settings.seed)
    curve = count_pairs(data.embeddings[rows], data.codes[rows], settings.threshold_bins, settings.memory_mb)
    if curve.positive_counts.sum() == 0:
        return {}
    scores = score_threshold(curve, threshold)
    return {"pair_precision": scores.precision, "pair_recall": scores.recall, "pair_f1": scores.f1}


def threshold_curve_frame(curve: PairCurve) -> pd.DataFrame:
    """Pairwise precision, recall and F1 per candidate threshold, over the similarities pairs occupy.

    The table behind the threshold curve of `dvc plots` (and of any plot of the user's own).
    """
    low, high = occupied_bins(curve)
    shown = slice(max(0, low - 1), min(len(curve.thresholds), high + 1))
    columns = {"threshold": curve.thresholds, "precision": curve.precision, "recall": curve.recall, "f1": curve.f1}
    return pd.DataFrame({name: values[shown] for name, values in columns.items()})


def draw_map(data: SplitData, settings: EvaluateConfig, path: Path) -> None:
    rows = sample_rows(data.rows("test"), settings.map_max_points, settings.seed)
    if len(rows) == 0:
        return
    points = project_2d(data.embeddings[rows], settings.embedding_map, settings.seed)
    labels = [str(data.classes[c]) for c in data.codes[rows]]
    subsets = data.frame["subset"].to_numpy(dtype=str)[rows].tolist()
    method = "t-SNE" if settings.embedding_map == "tsne" else "PCA"
    plot_embedding_map(points, labels, subsets, path, f"test embeddings ({method}, {len(rows)} images)")


def group_overlap(frame: pd.DataFrame) -> dict[str, float]:
    """Groups in test and train, and how many test groups training also saw: 0 is the protocol's promise.

    A group is what preprocess.split.group_pattern finds in a file name (the typeface family in the
    chars data), so `groups/test_in_train` = 0 says every test query comes from a group that
    training never saw; items without a group are not counted.

    >>> group_overlap(pd.DataFrame({"group": ["a", "a", "b", ""], "split": ["train", "val", "test", "test"]}))
    {'groups/train': 1.0, 'groups/test': 1.0, 'groups/test_in_train': 0.0}
    """
    grouped = frame[frame["group"] != ""]
    train, test = (set(grouped.loc[grouped["split"] == split, "group"]) for split in ("train", "test"))
    return {
        "groups/train": float(len(train)),
        "groups/test": float(len(test)),
        "groups/test_in_train": float(len(test & train)),
    }


def evaluate(
    config: Config,
    model_path: Path,
    preprocessed_dir: Path,
    out_dir: Path,
    calibrate_clusters: CalibrateClusters,
    force: bool = False,
) -> EvaluationResult:
    """Evaluate `model_path` (checkpoint or ONNX) on `preprocessed_dir`; write metrics, tables, threshold and plots.

    `calibrate_clusters` chooses the cluster stage's threshold and resolution on the calibration images
    and scores them on each test subset (clustering.calibration.calibrate_clusters).
    """
    settings = config.evaluate
    model_path, preprocessed_dir = Path(model_path), Path(preprocessed_dir)
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} already exists; pass --force to replace it")
    data = load_split_data(config, model_path, preprocessed_dir)
    metrics: dict[str, float] = group_overlap(data.frame)
    tables: list[pd.DataFrame] = []
    worst: dict[str, list[WorstQuery]] = {}
    evaluated = [subset for subset in SUBSETS if len(data.rows("test", subset))]
    if not evaluated:
        raise UserError(f"{preprocessed_dir / SPLITS_FILE} has no test images to evaluate")
    for subset in evaluated:
        subset_metrics, subset_tables, worst[subset] = score_subset(data, subset, settings)
        metrics |= prefixed(f"{subset}/", subset_metrics)
        tables += subset_tables
    for protocol in ("", "loo/"):
        seen, unseen = (metrics.get(f"{subset}/{protocol}precision_at_1") for subset in SUBSETS)
        if seen is not None and unseen is not None:
            metrics[f"{protocol}precision_drop"] = seen - unseen

    calibration_split, calibration_rows, curve, choice = calibrate(data, settings)
    metrics |= {"threshold": choice.threshold}
    metrics |= prefixed("threshold/", {"precision": choice.precision, "recall": choice.recall, "f1": choice.f1})
    for subset in evaluated:
        metrics |= prefixed(f"{subset}/", score_test_pairs(data, subset, choice.threshold, settings))
    test_sets = {}
    for subset in evaluated:
        test_rows = sample_rows(data.rows("test", subset), settings.calibration_max_images, settings.seed)
        test_sets[subset] = (data.embeddings[test_rows], data.codes[test_rows])
    clustering = calibrate_clusters(
        data.embeddings[calibration_rows],
        data.codes[calibration_rows],
        choice.threshold,
        config.cluster,
        calibration_split,
        test_sets,
    )
    metrics |= clustering.metrics
    metrics = {key: float(value) for key, value in sorted(metrics.items()) if math.isfinite(value)}
    threshold_details = {
        "objective": settings.threshold_objective,
        "target_precision": settings.target_precision if settings.threshold_objective == "precision" else None,
        "precision": choice.precision,
        "recall": choice.recall,
        "f1": choice.f1,
        "split": calibration_split,
        "images": len(calibration_rows),
        "positive_pairs": int(curve.positive_counts.sum()),
        "negative_pairs": int(curve.negative_counts.sum()),
        "model": str(model_path),
        "cluster_threshold": clustering.threshold,
        "resolution": clustering.resolution,
        "resolution_f1": clustering.f1,
    }

    with atomic_directory(out_dir, replace=force) as temporary:
        write_json_atomic(temporary / METRICS_FILE, metrics)
        write_threshold(temporary / THRESHOLD_FILE, choice.threshold, **threshold_details)
        write_text_atomic(temporary / PER_CLASS_FILE, pd.concat(tables).to_csv(index=False, float_format="%.6g"))
        curve_csv = threshold_curve_frame(curve).to_csv(index=False, float_format="%.6g")
        write_text_atomic(temporary / THRESHOLD_CURVE_FILE, curve_csv)
        plots = temporary / PLOTS_DIR
        split_name = f"{calibration_split} pairs"
        plot_similarity_histograms(curve, choice.threshold, plots / "similarity_histograms.png", split_name)
        plot_threshold_curves(curve, choice, plots / "threshold_curves.png", f"threshold on {split_name}")
        draw_map(data, settings, plots / "embedding_map.png")
        for subset, rows in worst.items():
            if rows:
                plot_worst_queries(rows, plots / f"worst_queries_{subset}.png", f"worst {subset} test queries")
    log.info(
        "evaluation written to %s (threshold %.4f; clusters: threshold %.4f, Louvain resolution %g); "
        "test queries from %d groups, %d of them also in train",
        out_dir,
        choice.threshold,
        clustering.threshold,
        clustering.resolution,
        metrics["groups/test"],
        metrics["groups/test_in_train"],
    )
    return EvaluationResult(
        out_dir=out_dir,
        metrics=metrics,
        threshold=choice.threshold,
        cluster_threshold=clustering.threshold,
        resolution=clustering.resolution,
    )
