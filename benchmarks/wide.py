"""The wide benchmark: thousands of classes with 3 to 7 images each, today's defaults against the new ones.

Users' class folders are often wide (products, icons, species: many classes, few images each),
unlike the chars data (62 classes x 120). This renders the glyphs data (`replearn data glyphs`:
2,030 Unicode classes, 3 to 7 fonts each, file names <family>_<font>_<n>.png), preprocesses it
with the default split (20% of the classes unseen, typeface families kept on one side within a
class), trains each recipe, and scores the unseen classes, which training never saw:

- unseen LOO P@1: every image of the unseen classes queries all the others (leave-one-out; a
  query whose class has no other image does not count), as an inbox of new classes would be searched;
- unseen test -> train P@1: the unseen test images (held-out families) query the unseen train
  images (evaluate's `unseen/precision_at_1`);
- the cluster stage on the unseen classes' train and test images, with the threshold and resolution
  that the recipe's calibration chose on the val split (whose labels it read, so every unseen val
  image is left out here, and with it the calibration classes that the split holds whole in val on
  wide data): pairwise F (P / R) against the classes, with the images in cluster 0 counted as
  singletons, and the fraction unclustered (cluster 0). Both recipes cluster the same images.

Raw pixels (grey levels, centred and unit-normalised, as benchmarks/generalization.py scores them)
are scored on the same queries and galleries. The recipes: today's (600 iterations) and the new
defaults (iterations from the data: 1,227 for the 1,636 training classes, and the split of wide
data, data/splits.py). Each preprocesses with its own split and calibrates the cluster stage on its
val split as evaluate does:

- today's split gives val and test a typeface family of every class, so a class of three
  families trains on one; its val split holds 1-2 images of a class;
- the new one leaves a seen class's families where their numbers fall (train keeps about 70% of
  the seen images instead of half) and holds a quarter of the unseen classes whole in val.

The unseen classes outside val are split alike by both, so both recipes are scored on the same
queries, galleries and clustered images: those of the new split.

    python benchmarks/wide.py --out /tmp/wide            # renders, preprocesses, trains twice (64 px)
    python benchmarks/wide.py --out /tmp/wide --size 32  # a cheaper proxy

A rerun with the same --out reuses the preprocessed folders and finished training runs in it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from generalization import pixel_vectors  # benchmarks/generalization.py: raw pixels scored the same way
from rich.console import Console
from rich.table import Table

from replearn.clustering.calibration import choose_clustering, louvain_config, reported_scores
from replearn.clustering.methods import cluster_embeddings
from replearn.config import DEFAULT_RESOLUTION, Config, load_config
from replearn.console import setup_logging
from replearn.data.glyphs import generate_glyphs
from replearn.data.preprocess import preprocess, read_summary
from replearn.evaluation.evaluate import SplitData, calibrate, load_split_data
from replearn.evaluation.retrieval import score_retrieval
from replearn.training.train import train

TODAY_ITERATIONS = 600  # train.iterations before the schedule followed the data
SHOWN_WITH_F = ("pairwise P", "pairwise R")


def precision_at_1(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, loo: bool
) -> float:
    scores = score_retrieval(
        queries,
        query_labels,
        gallery,
        gallery_labels,
        leave_one_out=loo,
        recall_at=[1],
        knn_k=1,
        keep_neighbors=0,
        memory_mb=256.0,
        description="P@1",
    )
    return scores.summarise()["precision_at_1"]


def unseen_rows(data: SplitData) -> np.ndarray:
    """Every image of the unseen classes, whatever its split: training saw none of them."""
    return np.flatnonzero((data.frame["subset"] == "unseen").to_numpy())


def retrieval_scores(vectors: np.ndarray, data: SplitData) -> dict[str, float]:
    """Unseen LOO P@1 over every unseen image, and unseen test -> unseen train P@1."""
    unseen, test, gallery = unseen_rows(data), data.rows("test", "unseen"), data.rows("train", "unseen")
    codes = data.codes
    return {
        "unseen LOO P@1": precision_at_1(vectors[unseen], codes[unseen], vectors[unseen], codes[unseen], True),
        "unseen test->train P@1": precision_at_1(vectors[test], codes[test], vectors[gallery], codes[gallery], False),
    }


def aligned_rows(data: SplitData, reference: SplitData, rows: np.ndarray) -> np.ndarray:
    """The rows of `data` that hold the images of `reference`'s `rows` (the same files, split another way)."""
    position = pd.Series(np.arange(len(data.frame)), index=data.frame["path"].to_numpy())
    return position.loc[reference.frame["path"].iloc[rows].to_numpy()].to_numpy()


def aligned_to(data: SplitData, reference: SplitData) -> SplitData:
    """`data`'s embeddings under `reference`'s split: both recipes are scored on the same queries and galleries."""
    rows = aligned_rows(data, reference, np.arange(len(reference.frame)))
    return SplitData(reference.frame, data.embeddings[rows], reference.codes, reference.classes, reference.root)


def cluster_scores(config: Config, data: SplitData, scored: np.ndarray, stage_min_size: int) -> dict[str, float]:
    """Calibrate on val as evaluate does, then cluster the `scored` rows (which it did not read) as the stage would.

    `stage_min_size`: the cluster stage's min_size; evaluate calibrates with config.cluster.min_size either way.
    """
    _, rows, _, pair = calibrate(data, config.evaluate)
    assert not np.isin(scored, rows).any(), "the calibration read labels of images it is scored on"
    choice = choose_clustering(data.embeddings[rows], data.codes[rows], pair.threshold, config.cluster)
    threshold, resolution = (choice.threshold, choice.resolution) if choice else (pair.threshold, DEFAULT_RESOLUTION)
    stage = louvain_config(config.cluster, resolution).model_copy(update={"min_size": stage_min_size})
    ids = cluster_embeddings(data.embeddings[scored], threshold, stage)
    scores = reported_scores(data.codes[scored], ids)
    return {
        "pair threshold": pair.threshold,
        "cluster threshold": threshold,
        "resolution": resolution,
        "pairwise F": scores["pairwise_f1"],
        "pairwise P": scores["pairwise_precision"],
        "pairwise R": scores["pairwise_recall"],
        "unclustered": scores["unclustered_fraction"],
        "clusters": float(len(set(ids.tolist()) - {0})),
    }


def trained_model(config: Config, preprocessed: Path, out_dir: Path) -> dict[str, float]:
    """Train unless out_dir holds a finished run; its summary."""
    if not (out_dir / "train_summary.json").is_file():
        train(config, preprocessed, out_dir, force=True)
    summary: dict[str, float] = json.loads((out_dir / "train_summary.json").read_text())
    return summary


def print_table(rows: list[dict[str, float | str]], title: str) -> None:
    """Every row's values (pairwise P and R in brackets after F); results.json keeps them unrounded."""
    columns = [key for key in dict.fromkeys(key for row in rows for key in row) if key not in SHOWN_WITH_F]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "recipe" else "right")
    for row in rows:
        cells = [format_cell(row.get(column, "")) for column in columns]
        if "pairwise F" in row:
            cells[columns.index("pairwise F")] += f" ({row['pairwise P']:.3f} / {row['pairwise R']:.3f})"
        table.add_row(*cells)
    Console(width=220).print(table)


def format_cell(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if np.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 10 or float(value).is_integer() else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="class folders (default: the glyphs data rendered into --out)")
    parser.add_argument("--out", type=Path, required=True, help="work folder: data, training runs, results.json")
    parser.add_argument("--size", type=int, default=64, help="image side (preprocess.resize.size)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="overrides for every recipe")
    parser.add_argument("--max-classes", type=int, help="render only the first N glyph classes (a smoke test)")
    parser.add_argument(
        "--today-iterations", type=int, default=TODAY_ITERATIONS, help="today's recipe's iterations (a smoke test)"
    )
    args = parser.parse_args()
    setup_logging()

    config = load_config(None, args.overrides)
    data_dir = args.data or args.out / "glyphs"
    if not data_dir.is_dir():
        generate_glyphs(data_dir, size=config.data.size, seed=config.data.seed, max_classes=args.max_classes)
    # Today's split forced val and test on every class and held no class whole in val (data/splits.py).
    today = [*args.overrides, "preprocess.split.wide=false", "preprocess.split.calibration_fraction=0"]
    recipes = (("today", args.today_iterations, today), ("new", None, args.overrides))
    rows: list[dict[str, float | str]] = []
    reference: SplitData | None = None  # the new split: which images are queries, galleries and clustered
    for name, iterations, overrides in reversed(recipes):
        recipe = load_config(None, [*overrides, f"preprocess.resize.size={args.size}"])
        recipe.train.iterations = iterations
        preprocessed = args.out / f"preprocessed-{args.size}-{name}"
        if not (preprocessed / "splits.csv").is_file():
            preprocess(recipe, data_dir, preprocessed)
        started = time.perf_counter()
        summary = trained_model(recipe, preprocessed, args.out / f"{name}-{args.size}" / "train")
        data = load_split_data(recipe, args.out / f"{name}-{args.size}" / "train" / "best.pt", preprocessed)
        # As the cluster stage decides (clustering/cluster.py, with_model_settings): wide data clusters at 2.
        folder = read_summary(preprocessed)
        wide = folder is not None and bool(folder.wide)
        stage_min_size = recipe.cluster.wide_min_size if wide else recipe.cluster.min_size
        reference = reference or data
        aligned = aligned_to(data, reference)
        scored = aligned_rows(data, reference, np.setdiff1d(unseen_rows(reference), reference.rows("val")))
        rows.insert(
            0,
            {
                "recipe": f"{name}: {summary['iterations']} iterations ({summary['iteration_rule']})",
                "iterations": float(summary["iterations"]),
                "train images": float((data.frame["split"] == "train").sum()),
                "train min": summary["seconds"] / 60,
                "s/it": summary["seconds"] / summary["iterations"],
                **retrieval_scores(aligned.embeddings, aligned),
                **cluster_scores(recipe, data, scored, stage_min_size),
            },
        )
        if wide and stage_min_size != recipe.cluster.min_size:  # what the wide data's min_size adds
            stage = cluster_scores(recipe, data, scored, recipe.cluster.min_size)
            rows.insert(1, {"recipe": f"{name}, cluster stage at min_size {recipe.cluster.min_size}", **stage})
        print(f"{name}: {(time.perf_counter() - started) / 60:.1f} min including training")
    assert reference is not None
    vectors = pixel_vectors(reference.root, list(reference.frame["path"]))
    rows.insert(0, {"recipe": "raw pixels, no learning", **retrieval_scores(vectors, reference)})
    (args.out / f"results-{args.size}.json").write_text(json.dumps(rows, indent=2))
    unseen = reference.frame[reference.frame["subset"] == "unseen"]
    clustered = unseen[unseen["split"] != "val"]
    title = (
        f"wide benchmark, {args.size} px: {reference.frame['label'].nunique():,} classes; "
        f"{len(unseen):,} images of {unseen['label'].nunique()} unseen classes; "
        f"{len(clustered):,} images of {clustered['label'].nunique()} of them clustered"
    )
    print_table(rows, title)


if __name__ == "__main__":
    main()
