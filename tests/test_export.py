"""The export stage on the real model: parity with eager PyTorch, dynamic batch, metadata, variants, failures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from replearn import __version__
from replearn.artifacts.metadata import ModelMetadata
from replearn.cli import app
from replearn.config import ExportConfig, ResizeConfig, load_config
from replearn.data.images import image_to_array, load_image
from replearn.embedding.onnx import OnnxEmbedder, read_metadata
from replearn.errors import UserError
from replearn.export import onnx_export
from replearn.export.onnx_export import ExportResult, Parity, check_parity, export_model, hash_config, measure_parity
from replearn.stages.export import stage
from replearn.training.backbones import BACKBONES
from replearn.training.model import build_model, load_model

runner = CliRunner()
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def real_batch(preprocessed: Path, count: int) -> np.ndarray:
    """`count` preprocessed images from the end of the sorted list (the parity batch spreads over all of them)."""
    paths = sorted((preprocessed / "images").rglob("*.png"))[-count:]
    assert len(paths) == count
    return np.stack([image_to_array(load_image(path, ResizeConfig(size=32))) for path in paths])


def eager(checkpoint: Path, batch: np.ndarray) -> np.ndarray:
    model, _, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def test_export_passes_parity_on_a_real_batch(tiny_export: ExportResult) -> None:
    parity = tiny_export.parity
    assert parity.images == 32
    assert parity.max_abs_diff <= 1e-4 and parity.min_cosine >= 0.9999
    assert tiny_export.exporter == "dynamo" and tiny_export.opset >= 17
    onnx.checker.check_model(str(tiny_export.path))


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_dynamic_batch_matches_eager(
    tiny_export: ExportResult, tiny_checkpoint: Path, tiny_preprocessed: Path, batch_size: int
) -> None:
    batch = real_batch(tiny_preprocessed, batch_size)
    embeddings = OnnxEmbedder(tiny_export.path, provider="cpu").embed_arrays(batch)
    assert embeddings.shape == (batch_size, 8) and embeddings.dtype == np.float32
    parity = measure_parity(eager(tiny_checkpoint, batch), embeddings)
    assert parity.max_abs_diff <= 1e-4 and parity.min_cosine >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_graph_has_a_dynamic_batch_and_a_fixed_image_size(tiny_export: ExportResult) -> None:
    graph = onnx.load(str(tiny_export.path)).graph
    (images,) = graph.input
    (embeddings,) = graph.output
    assert (images.name, embeddings.name) == ("images", "embeddings")
    dims = images.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert embeddings.type.tensor_type.shape.dim[0].dim_param
    assert embeddings.type.tensor_type.shape.dim[1].dim_value == 8


def test_metadata_round_trip(tiny_export: ExportResult, tiny_checkpoint: Path, tiny_preprocessed: Path) -> None:
    _, config, classes = load_model(tiny_checkpoint)
    splits_hash = hashlib.sha256((tiny_preprocessed / "splits.csv").read_bytes()).hexdigest()[:16]
    expected = ModelMetadata(
        input_size=32,
        channel_order="RGB",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        embedding_dim=8,
        threshold=0.42,
        classes=tuple(classes),
        replearn_version=__version__,
        config_hash=hash_config(config),
        data_version=f"splits-{splits_hash}",
        resize_mode="pad",
        precision="fp32",
        wide=False,  # preprocess.json's: 62 classes are not wide data
    )
    assert read_metadata(tiny_export.path) == expected == tiny_export.metadata
    props = {entry.key: entry.value for entry in onnx.load(str(tiny_export.path)).metadata_props}
    assert props["channel_order"] == "RGB" and json.loads(props["classes"]) == classes
    assert json.loads(props["mean"]) == list(IMAGENET_MEAN) and json.loads(props["threshold"]) == 0.42
    assert ModelMetadata.from_props(expected.to_props()) == expected


def test_metadata_without_threshold_and_malformed_metadata() -> None:
    metadata = ModelMetadata(64, "RGB", IMAGENET_MEAN, IMAGENET_STD, 128, None, (), "0", "h", "v", "crop")
    props = metadata.to_props()
    assert props["threshold"] == "null" and ModelMetadata.from_props(props).threshold is None
    older = {key: value for key, value in props.items() if key != "wide"}  # exported before the key
    assert ModelMetadata.from_props(older).wide is None
    assert ModelMetadata.from_props({**props, "wide": "true"}).wide is True
    with pytest.raises(UserError, match=r"m.onnx lacks replearn metadata \['classes'\]"):
        ModelMetadata.from_props({k: v for k, v in props.items() if k != "classes"}, source="m.onnx")
    with pytest.raises(UserError, match="malformed"):
        ModelMetadata.from_props({**props, "mean": "[1, 2]"})


def test_variants_carry_metadata_and_stay_close(tiny_export: ExportResult, tiny_preprocessed: Path) -> None:
    assert set(tiny_export.variants) == {"int8", "fp16"}
    batch = real_batch(tiny_preprocessed, 7)
    reference = OnnxEmbedder(tiny_export.path, provider="cpu").embed_arrays(batch)
    for variant, (path, parity) in tiny_export.variants.items():
        assert path.name == f"model.{variant}.onnx"
        metadata = read_metadata(path)
        assert metadata.precision == variant and metadata.threshold == 0.42
        assert parity.min_cosine >= 0.95
        embeddings = OnnxEmbedder(path, provider="cpu").embed_arrays(batch)
        assert embeddings.shape == (7, 8) and measure_parity(reference, embeddings).min_cosine >= 0.95


def test_check_parity_fails_with_the_numbers() -> None:
    parity = measure_parity(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.6, 0.8]]))
    assert parity == Parity(images=2, max_abs_diff=0.6, min_cosine=0.8)
    with pytest.raises(UserError, match=r"max abs diff 0.6 \(allowed 0.0001\), min cosine 0.800000"):
        check_parity(parity, ExportConfig(), "model.onnx")
    check_parity(Parity(2, 1e-6, 0.99999), ExportConfig(), "model.onnx")


def test_failed_parity_writes_nothing(
    tiny_export: ExportResult, tiny_checkpoint: Path, tiny_preprocessed: Path, tmp_path: Path, monkeypatch
) -> None:
    """The real graph against an impossible tolerance: the export fails and leaves no file behind."""
    graph = onnx.load(str(tiny_export.path))
    monkeypatch.setattr(onnx_export, "trace_to_onnx", lambda model, example, config: graph)
    out = tmp_path / "model.onnx"
    config = load_config(None, ["export.max_abs_diff=1e-12", "export.quantize=int8"])
    with pytest.raises(UserError, match="does not match eager PyTorch on 32 images: max abs diff"):
        stage(config, tiny_checkpoint, out, tiny_preprocessed)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_bad_inputs(
    tiny_export: ExportResult, tiny_checkpoint: Path, tiny_preprocessed: Path, tmp_path: Path, monkeypatch
) -> None:
    graph = onnx.load(str(tiny_export.path))
    monkeypatch.setattr(onnx_export, "trace_to_onnx", lambda model, example, config: graph)
    out = tmp_path / "model.onnx"
    args = ["export", str(tiny_checkpoint), str(out), "--images", str(tiny_preprocessed), "--data-version", "v7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and "threshold not set, data v7" in result.output
    assert read_metadata(out).data_version == "v7" and not (tmp_path / "model.int8.onnx").exists()

    missing = runner.invoke(app, ["export", str(tmp_path / "none.pt"), str(out)])
    assert isinstance(missing.exception, UserError) and "none.pt does not exist" in str(missing.exception)
    both = runner.invoke(app, [*args, "--threshold", "0.5", "--threshold-file", str(tmp_path / "t.json")])
    assert isinstance(both.exception, UserError) and "not both" in str(both.exception)
    given = runner.invoke(app, [*args, "--threshold", "0.61"])
    assert given.exit_code == 0, given.output
    assert read_metadata(out).threshold == 0.61
    (tmp_path / "threshold.json").write_text('{"f1": 0.5}')
    bad = runner.invoke(app, [*args, "--threshold-file", str(tmp_path / "threshold.json")])
    assert isinstance(bad.exception, UserError) and "numeric 'threshold'" in str(bad.exception)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(BACKBONES) - {"resnet18"}))  # resnet18: `tiny_export` above
def test_each_backbone_exports_with_parity_and_its_imagenet_statistics(name: str, tmp_path: Path) -> None:
    """Every backbone on offer, at 64 px with a one-layer transformer, through the default (dynamo) exporter."""
    overrides = ["preprocess.resize.size=64", f"train.model.backbone.name={name}", "train.model.d_model=16"]
    overrides += ["train.model.heads=2", "train.model.layers=1", "train.model.embedding_dim=8"]
    config = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(config.train.model).eval()
    batch = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    result = export_model(config.export, model, config, ["a", "b"], tmp_path / "model.onnx", batch, "v1")
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.min_cosine >= 0.9999
    transforms = BACKBONES[name].imagenet.transforms()
    metadata = read_metadata(result.path)
    assert metadata.mean == tuple(transforms.mean) and metadata.std == tuple(transforms.std)
