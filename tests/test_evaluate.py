"""The evaluate stage and the compare command end to end, on the tiny chars data with an untrained tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from replearn.artifacts.threshold import read_threshold, write_threshold
from replearn.cli import app
from replearn.clustering.calibration import CLUSTER_THRESHOLD_STEPS, RESOLUTIONS
from replearn.config import Config, load_config
from replearn.data.splits import read_splits
from replearn.embedding.onnx import read_metadata
from replearn.errors import UserError
from replearn.evaluation.compare import compare_images
from replearn.stages.evaluate import stage as evaluate

runner = CliRunner()

OVERRIDES = [
    "preprocess.resize.size=32",
    "preprocess.workers=1",
    "preprocess.split.test_fraction=0.4",
    "preprocess.split.val_fraction=0.2",
    "train.devices=cpu",
    "train.model.d_model=16",
    "train.model.heads=2",
    "train.model.layers=1",
    "train.model.embedding_dim=8",
    "evaluate.batch_size=64",
    "evaluate.worst_queries=3",
    "evaluate.worst_neighbors=4",
    "evaluate.embedding_map=pca",
    "evaluate.threshold_bins=400",
]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(None, OVERRIDES)


@pytest.fixture(scope="module")
def preprocessed(config: Config, chars_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 chars classes x 8 images: a few unseen classes, and several test images per class for leave-one-out."""
    from replearn.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("evaluate")
    for class_dir in sorted(chars_dir.iterdir())[:16]:
        shutil.copytree(class_dir, root / "raw" / class_dir.name)
    preprocess(config, root / "raw", root / "preprocessed")
    return root / "preprocessed"


@pytest.fixture(scope="module")
def checkpoint(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model saved in the training checkpoint format: evaluation must not care how good it is."""
    import torch

    from replearn.artifacts.checkpoint import save_checkpoint
    from replearn.training.model import build_model

    torch.manual_seed(0)
    model = build_model(config.train.model)
    path = tmp_path_factory.mktemp("model") / "best.pt"
    payload = {"model": model.state_dict(), "config": config.model_dump(mode="json", by_alias=True), "classes": []}
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="module")
def evaluated(config: Config, checkpoint: Path, preprocessed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evaluation") / "eval"
    evaluate(config, checkpoint, preprocessed, out)
    return out


def test_outputs_are_written(evaluated: Path) -> None:
    for name in ("metrics.json", "per_class.csv", "threshold.json"):
        assert (evaluated / name).is_file(), name
    plots = {p.name for p in (evaluated / "plots").iterdir()}
    assert {"similarity_histograms.png", "threshold_curves.png", "embedding_map.png", "worst_queries_seen.png"} <= plots
    assert all((evaluated / "plots" / name).read_bytes().startswith(b"\x89PNG") for name in plots)
    assert not [p for p in evaluated.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_metrics_have_flat_keys_for_both_subsets_and_protocols(evaluated: Path, preprocessed: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert all(isinstance(value, float) for value in metrics.values())
    for subset in ("seen", "unseen"):
        for name in ("precision_at_1", "recall_at_8", "r_precision", "map_at_r", "knn_accuracy"):
            for key in (f"{subset}/{name}", f"{subset}/macro/{name}", f"{subset}/loo/{name}"):
                assert 0.0 <= metrics[key] <= 1.0, key
        assert metrics[f"{subset}/recall_at_1"] == metrics[f"{subset}/precision_at_1"]
        assert metrics[f"{subset}/recall_at_1"] <= metrics[f"{subset}/recall_at_2"] <= metrics[f"{subset}/recall_at_8"]
        assert 0.0 <= metrics[f"{subset}/nmi"] <= 1.0
    assert metrics["precision_drop"] == pytest.approx(metrics["seen/precision_at_1"] - metrics["unseen/precision_at_1"])
    splits = read_splits(preprocessed)
    families = {split: set(splits.loc[splits["split"] == split, "group"]) for split in ("train", "test")}
    assert metrics["groups/test"] == len(families["test"]) >= 1
    assert metrics["groups/train"] == len(families["train"]) >= 1
    assert metrics["groups/test_in_train"] == 0.0
    for subset in ("seen", "unseen"):
        # More gallery images from other classes can only take a query's top match away, never give one.
        assert 0.0 <= metrics[f"{subset}/all_gallery/precision_at_1"] <= metrics[f"{subset}/precision_at_1"]
        assert 0.0 <= metrics[f"{subset}/all_gallery/map_at_r"] <= 1.0
    splits = pd.read_csv(preprocessed / "splits.csv")
    for subset in ("seen", "unseen"):
        in_subset = splits[splits["subset"] == subset]
        test = in_subset[in_subset["split"] == "test"]
        assert metrics[f"{subset}/queries"] + metrics[f"{subset}/lone_queries"] == len(test)
        assert metrics[f"{subset}/gallery"] == (in_subset["split"] == "train").sum()
        assert metrics[f"{subset}/classes"] == test["label"].nunique()


def test_threshold_file_matches_the_metrics(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    record = json.loads((evaluated / "threshold.json").read_text())
    assert read_threshold(evaluated) == record["threshold"] == metrics["threshold"]
    assert -1.0 <= record["threshold"] <= 1.0
    assert record["split"] == "val" and record["positive_pairs"] > 0
    assert record["f1"] == metrics["threshold/f1"]
    # The cluster stage's Louvain resolution and threshold, chosen together on the same val images,
    # the threshold one of the steps at or below the pair threshold.
    assert record["resolution"] in RESOLUTIONS and record["resolution"] == metrics["cluster/resolution"]
    steps = [round(record["threshold"] - step, 6) for step in CLUSTER_THRESHOLD_STEPS]
    assert record["cluster_threshold"] in steps and record["cluster_threshold"] == metrics["cluster/threshold"]
    assert record["resolution_f1"] == metrics["cluster/val/pairwise_f1"]
    assert 0.0 <= metrics["seen/clusters/pairwise_f1"] <= 1.0 and "unseen/clusters/unclustered_fraction" in metrics


def test_per_class_table(evaluated: Path, preprocessed: Path) -> None:
    table = pd.read_csv(evaluated / "per_class.csv")
    assert set(table["protocol"]) == {"test_vs_train", "leave_one_out"}
    assert set(table["subset"]) == {"seen", "unseen"}
    splits = pd.read_csv(preprocessed / "splits.csv")
    test_classes = set(splits.loc[splits["split"] == "test", "label"])
    assert set(table["class"]) == test_classes
    seen = table[(table["subset"] == "seen") & (table["protocol"] == "test_vs_train")]
    weighted = np.average(seen["precision_at_1"].fillna(0), weights=seen["queries"])
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert weighted == pytest.approx(metrics["seen/precision_at_1"], abs=1e-5)


def test_bad_inputs_are_user_errors(config: Config, checkpoint: Path, preprocessed: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="splits.csv"):
        evaluate(config, checkpoint, tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        evaluate(config, tmp_path / "missing.pt", preprocessed, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compare_same_and_different_images(
    config: Config, checkpoint: Path, preprocessed: Path, tmp_path: Path
) -> None:
    images = sorted((preprocessed / "images").rglob("*.png"))
    same = compare_images(config, checkpoint, images[0], images[0], threshold=0.5)
    assert same.similarity == pytest.approx(1.0, abs=1e-5) and same.same_class is True
    write_threshold(tmp_path / "threshold.json", 0.999999)
    other = compare_images(config, checkpoint, images[0], images[-1], threshold_file=tmp_path / "threshold.json")
    assert other.threshold == 0.999999 and other.same_class is False
    assert compare_images(config, checkpoint, images[0], images[-1]).same_class is None
    with pytest.raises(UserError, match="cannot read image"):
        compare_images(config, checkpoint, images[0], tmp_path / "threshold.json")


def test_existing_output_needs_force(config: Config, checkpoint: Path, preprocessed: Path, evaluated: Path) -> None:
    with pytest.raises(FileExistsError, match="--force"):
        evaluate(config, checkpoint, preprocessed, evaluated)


def test_cli_evaluate_is_deterministic_and_compare_reads_its_threshold(
    checkpoint: Path, preprocessed: Path, evaluated: Path, tmp_path: Path
) -> None:
    sets = [arg for override in OVERRIDES for arg in ("--set", override)]
    out = tmp_path / "eval"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    result = runner.invoke(app, [*sets, "evaluate", str(checkpoint), str(preprocessed), str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert "threshold" in result.output and "unseen" in result.output
    assert not (out / "stale.txt").exists()
    assert (out / "metrics.json").read_text() == (evaluated / "metrics.json").read_text()
    assert (out / "per_class.csv").read_text() == (evaluated / "per_class.csv").read_text()
    image = next((preprocessed / "images").rglob("*.png"))
    args = [*sets, "compare", str(image), str(image), "--model", str(checkpoint), "--threshold-file", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cosine similarity: 1.0000" in result.output and "same class" in result.output


def test_onnx_model_evaluates_like_its_checkpoint_and_carries_the_threshold(
    config: Config, checkpoint: Path, preprocessed: Path, evaluated: Path, tmp_path: Path
) -> None:
    from replearn.stages.export import stage

    model = tmp_path / "model.onnx"
    stage(config, checkpoint, model, images_dir=preprocessed, threshold_file=evaluated / "threshold.json")
    record = json.loads((evaluated / "threshold.json").read_text())
    metadata = read_metadata(model)
    assert (metadata.resolution, metadata.cluster_threshold) == (record["resolution"], record["cluster_threshold"])
    out = tmp_path / "eval_onnx"
    evaluate(config, model, preprocessed, out)
    from_onnx = json.loads((out / "metrics.json").read_text())
    from_checkpoint = json.loads((evaluated / "metrics.json").read_text())
    assert from_onnx.keys() == from_checkpoint.keys()
    for key in ("seen/gallery", "seen/queries", "unseen/classes"):
        assert from_onnx[key] == from_checkpoint[key]
    # The untrained model's embeddings are nearly collapsed, so float noise may swap a few close neighbours.
    assert from_onnx["seen/map_at_r"] == pytest.approx(from_checkpoint["seen/map_at_r"], abs=0.1)
    assert from_onnx["threshold"] == pytest.approx(from_checkpoint["threshold"], abs=0.01)
    image = next((preprocessed / "images").rglob("*.png"))
    result = compare_images(config, model, image, image)
    assert result.threshold == read_threshold(evaluated) and result.threshold_source == f"metadata of {model}"
    assert result.same_class is True


def test_the_plots_and_headline_metrics_the_dashboard_shows(evaluated: Path) -> None:
    from replearn.evaluation.evaluate import PLOT_FILES, EvaluationResult, headline_metrics

    metrics = json.loads((evaluated / "metrics.json").read_text())
    result = EvaluationResult(evaluated, metrics, threshold=0.0, cluster_threshold=0.0, resolution=1.0)
    written = {path.name for path in (evaluated / "plots").iterdir()}
    assert [path.name for path in result.plots] == [name for name in PLOT_FILES if name in written]
    assert {path.name for path in result.plots} == written  # no plot is left off the dashboard
    headline = headline_metrics(metrics)
    assert {"seen/precision_at_1", "seen/map_at_r", "threshold", "cluster/threshold"} <= set(headline)
    assert all(headline[key] == metrics[key] for key in headline) and len(headline) < 20
