"""Leave one family out: each group (typeface family in the chars data) in turn is the whole test set.

The default split holds one or two families out of training; which ones is chance, and one family is
a small sample of "new styles". Here every family takes its turn: preprocess with
`preprocess.split.test_groups=[F]` (val is then drawn from the other families by the usual
thresholds), train the recipe on the rest, and score P@1 of F's test images against the train gallery
of the same subset (seen classes: trained on, in other families; unseen classes: never trained on).
Raw pixels (grey levels, each image centred and unit-normalised: normalised cross-correlation) are
scored on the same queries and gallery, in the same run, as the no-learning anchor. One table, then
the mean and the spread (standard deviation and worst family) over the families.

    python benchmarks/generalization.py              # the chars data at 32 px, 200 iterations a fold
    python benchmarks/generalization.py --size 64 --iterations 600   # the default recipe (~8 min a fold)
    python benchmarks/generalization.py --set train.augmentations=[] --families HKGrotesk DejaVuSerif

Time is bounded by folds x iterations: the script prints its plan first. The default budget is a
cheap proxy that shows the spread across families, not the recipe's quality: 200 iterations of the
default 128-image batch (25,600 images, as many as 400 of the earlier 64-image batch) left the model
near raw pixels on the 2-core development CPU (docs/train.md). The data is DATA_DIR
(default data/raw, or the chars data rendered into a temporary folder when that is missing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from replearn.config import Config, load_config
from replearn.console import setup_logging
from replearn.data.chars import generate_chars
from replearn.data.preprocess import preprocess
from replearn.data.splits import SUBSETS, read_splits
from replearn.evaluation.retrieval import score_retrieval
from replearn.similarity import unit_rows
from replearn.stages.evaluate import stage as evaluate
from replearn.training.data import decode_files
from replearn.training.train import train


def pixel_vectors(preprocessed_dir: Path, paths: list[str]) -> np.ndarray:
    """Grey levels of each preprocessed image, centred and unit-normalised: cosine is then correlation."""
    images = decode_files([preprocessed_dir / path for path in paths]).astype(np.float32).mean(axis=1)
    flat = images.reshape(len(paths), -1)
    return unit_rows(flat - flat.mean(axis=1, keepdims=True))


def pixel_precision_at_1(preprocessed_dir: Path) -> dict[str, float]:
    """P@1 of raw pixels, test queries against the train gallery of the same subset."""
    frame = read_splits(preprocessed_dir)
    scores = {}
    for subset in SUBSETS:
        rows = frame[frame["subset"] == subset]
        test, gallery = rows[rows["split"] == "test"], rows[rows["split"] == "train"]
        if test.empty or gallery.empty:
            continue
        classes = {name: code for code, name in enumerate(sorted(set(rows["label"])))}
        result = score_retrieval(
            pixel_vectors(preprocessed_dir, list(test["path"])),
            test["label"].map(classes).to_numpy(),
            pixel_vectors(preprocessed_dir, list(gallery["path"])),
            gallery["label"].map(classes).to_numpy(),
            leave_one_out=False,
            recall_at=[1],
            knn_k=1,
            keep_neighbors=0,
            memory_mb=256.0,
            description=f"raw pixels, {subset}",
        )
        scores[subset] = result.summarise()["precision_at_1"]
    return scores


def run_fold(config: Config, data_dir: Path, work: Path, family: str) -> dict[str, float | str]:
    """Preprocess with `family` as the test split, train, evaluate; the model's and the pixels' P@1."""
    fold = config.model_copy(deep=True)
    fold.preprocess.split.test_groups = [family]
    started = time.perf_counter()
    preprocessed = work / "preprocessed"  # one folder for every fold: only splits.csv changes
    preprocess(fold, data_dir, preprocessed)
    trained = train(fold, preprocessed, work / family / "train", force=True)
    metrics = evaluate(fold, trained.out_dir / "best.pt", preprocessed, work / family / "evaluate", force=True).metrics
    pixels = pixel_precision_at_1(preprocessed)
    return {
        "family": family,
        "test images": float(metrics.get("seen/queries", 0) + metrics.get("unseen/queries", 0)),
        "groups in train": metrics["groups/train"],
        **{f"{subset} P@1": metrics.get(f"{subset}/precision_at_1", float("nan")) for subset in SUBSETS},
        **{f"{subset} pixels P@1": pixels.get(subset, float("nan")) for subset in SUBSETS},
        "minutes": (time.perf_counter() - started) / 60,
    }


def list_families(config: Config, data_dir: Path, work: Path) -> list[str]:
    """Every group the default split finds in the data."""
    preprocess(config, data_dir, work / "preprocessed")
    return sorted(set(read_splits(work / "preprocessed")["group"]) - {""})


def print_table(rows: list[dict[str, float | str]], title: str) -> None:
    columns = [key for key in rows[0] if key != "family"]
    table = Table(title=title)
    table.add_column("test family")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["family"]), *(format_cell(column, row[column]) for column in columns))
    for name, reduce in (("mean", statistics.fmean), ("std", statistics.pstdev), ("worst", min)):
        cells = []
        for column in columns:
            values = [float(row[column]) for row in rows if not np.isnan(float(row[column]))]
            cells.append(format_cell(column, reduce(values)) if "P@1" in column and values else "")
        table.add_row(name, *cells, style="bold")
    Console(width=140).print(table)


def format_cell(column: str, value: float | str) -> str:
    if "P@1" in column:
        return f"{float(value):.3f}"
    if column == "minutes":
        return f"{float(value):.1f}"
    return f"{float(value):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("data/raw"), help="class folders")
    parser.add_argument("--config", type=Path, default=Path("params.yaml"), help="the recipe (default params.yaml)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="overrides, e.g. train.lr=0.003")
    parser.add_argument("--size", type=int, default=32, help="image side (preprocess.resize.size)")
    parser.add_argument("--iterations", type=int, default=200, help="training iterations per fold")
    parser.add_argument("--families", nargs="*", help="only these test families (default: every one)")
    parser.add_argument("--out", type=Path, help="keep the folds' outputs and write results.json here")
    args = parser.parse_args()
    setup_logging()

    overrides = [
        *args.overrides,
        f"preprocess.resize.size={args.size}",
        f"train.iterations={args.iterations}",
        f"train.checkpoint_every={args.iterations}",
        "evaluate.embedding_map=pca",
    ]
    config = load_config(args.config if args.config.is_file() else None, overrides)
    with tempfile.TemporaryDirectory(prefix="generalization-") as scratch:
        work = args.out or Path(scratch)
        data_dir = args.data_dir
        if not data_dir.is_dir():
            data_dir = work / "chars"
            if not data_dir.is_dir():
                generate_chars(data_dir, config.data.per_class, config.data.size, config.data.seed)
        families = args.families or list_families(config, data_dir, work)
        print(
            f"{len(families)} folds ({', '.join(families)}), {args.iterations} iterations at {args.size} px each, "
            f"on {data_dir}"
        )
        rows = [run_fold(config, data_dir, work, family) for family in families]
        if args.out:
            (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print_table(rows, f"leave one family out: {args.iterations} iterations at {args.size} px per fold")


if __name__ == "__main__":
    main()
