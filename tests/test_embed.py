"""The torch-free embedder on a really exported model: no torch import, bad files skipped, outputs readable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from replearn.cli import app
from replearn.config import EmbedConfig, ResizeConfig
from replearn.data.images import image_to_array, load_image
from replearn.embedding import onnx as embedder_module
from replearn.embedding.onnx import OnnxEmbedder, embed_folder, embed_images, list_images, read_embeddings
from replearn.errors import UserError
from replearn.export.onnx_export import ExportResult

runner = CliRunner()


@pytest.fixture(scope="module")
def inbox(chars_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine real images in nested folders, a corrupt PNG, a text file, and hidden files that must be ignored."""
    root = tmp_path_factory.mktemp("inbox") / "images"
    for class_dir in sorted(chars_dir.iterdir())[:3]:
        for image in sorted(class_dir.iterdir())[:3]:
            (root / class_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / class_dir.name / image.name)
    (root / "digit_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / ".hidden").mkdir()
    shutil.copy(next((root / "digit_0").glob("*.png")), root / ".hidden" / "skip.png")
    return root


def test_embed_never_imports_torch(tiny_export: ExportResult, inbox: Path, tmp_path: Path) -> None:
    """The whole `replearn embed` command runs in a fresh interpreter without torch entering sys.modules."""
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from replearn.cli import app\n"
        f"app(['embed', {str(tiny_export.path)!r}, {str(inbox)!r}, {str(out)!r}], standalone_mode=False)\n"
        "from replearn.embedding.onnx import embed_folder\n"
        f"embed_folder({str(tiny_export.path)!r}, {str(inbox)!r}, batch_size=4)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "embeddings.npy").is_file()


def test_corrupt_image_is_skipped_and_reported(tiny_export: ExportResult, inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["embed", str(tiny_export.path), str(inbox), str(out), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "2 unreadable file(s) skipped" in result.output
    failures = (out / "failures.csv").read_text().splitlines()
    assert failures[0] == "path,error" and len(failures) == 3
    assert failures[1].startswith("digit_0/broken.png,") and failures[2].startswith("notes.txt,UnidentifiedImageError")
    index = (out / "index.csv").read_text().splitlines()
    assert index[0] == "path" and len(index) == 10 and not any("hidden" in line or "broken" in line for line in index)
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (9, 8) and embeddings.dtype == np.float32
    summary = json.loads((out / "embed.json").read_text())
    assert summary["images"] == 9 and summary["failures"] == 2 and summary["embedding_dim"] == 8


def test_embeddings_match_the_model_on_the_shared_decoder(tiny_export: ExportResult, inbox: Path) -> None:
    """Rows follow the sorted paths, and equal the model on `load_image` at the size the metadata names."""
    embedder = OnnxEmbedder(tiny_export.path, provider="cpu", threads=1)
    assert embedder.metadata.resize == ResizeConfig(size=32, mode="pad")
    result = embed_folder(embedder, inbox, batch_size=4, workers=2)
    assert result.paths == sorted(result.paths) and len(result.paths) == 9
    direct = embedder.embed_arrays(
        np.stack([image_to_array(load_image(inbox / p, ResizeConfig(size=32))) for p in result.paths[:5]])
    )
    np.testing.assert_allclose(result.embeddings[:5], direct, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("file_format", ["npy", "parquet"])
def test_outputs_read_back(tiny_export: ExportResult, inbox: Path, tmp_path: Path, file_format: str) -> None:
    config = EmbedConfig.model_validate({"format": file_format, "provider": "cpu", "batch_size": 5})
    written = embed_images(config, tiny_export.path, inbox, tmp_path / "out")
    read = read_embeddings(tmp_path / "out")
    assert read.paths == written.paths and read.failures == written.failures
    np.testing.assert_array_equal(read.embeddings, written.embeddings)
    assert read.embeddings.dtype == np.float32
    with pytest.raises(FileExistsError, match="--force"):
        embed_images(config, tiny_export.path, inbox, tmp_path / "out")
    embed_images(config, tiny_export.path, inbox, tmp_path / "out", force=True)


def test_bad_models_and_folders_are_user_errors(tiny_export: ExportResult, inbox: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        OnnxEmbedder(tmp_path / "missing.onnx")
    (tmp_path / "fake.onnx").write_text("not a model")
    with pytest.raises(UserError, match="fake.onnx is not a model onnxruntime can load"):
        OnnxEmbedder(tmp_path / "fake.onnx")
    with pytest.raises(UserError, match="image folder .* does not exist"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        embed_images(EmbedConfig(), tiny_export.path, tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_without_replearn_metadata_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["embeddings"])],
        "bare",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "bare.onnx")
    with pytest.raises(UserError, match="bare.onnx lacks replearn metadata"):
        OnnxEmbedder(tmp_path / "bare.onnx")


def test_cuda_provider_fails_clearly_without_cuda(tiny_export: ExportResult) -> None:
    """auto falls back to the CPU; an explicit cuda request either gets CUDA or says why not."""
    assert OnnxEmbedder(tiny_export.path).providers[-1] == "CPUExecutionProvider"
    try:
        embedder = OnnxEmbedder(tiny_export.path, provider="cuda")
    except UserError as error:
        assert "cuda" in str(error)
    else:
        assert embedder.providers[0] == "CUDAExecutionProvider"


@pytest.fixture
def failing_cuda(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """onnxruntime as on a GPU host whose CUDA session fails to start (no device, bad driver); records each call."""
    calls: list[dict] = []
    real_session = embedder_module.ort.InferenceSession

    def session(path: str, options: object = None, providers: list[str] | None = None, **kwargs: object) -> object:
        calls.append({"providers": providers, **kwargs})
        if providers and "CUDAExecutionProvider" in providers:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real_session(path, options, providers=providers, **kwargs)

    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(embedder_module.ort, "get_available_providers", lambda: available)
    monkeypatch.setattr(embedder_module.ort, "InferenceSession", session)
    monkeypatch.setattr(embedder_module, "load_cuda_libraries", lambda: calls.append({"preloaded": True}))
    return calls


def test_a_failing_cuda_session_falls_back_to_the_cpu_with_the_same_options(
    tiny_export: ExportResult, failing_cuda: list[dict]
) -> None:
    """replearn's own fallback, not onnxruntime's, which prints a banner and drops disabled_optimizers."""
    assert OnnxEmbedder(tiny_export.path, provider="auto").providers == ["CPUExecutionProvider"]
    metadata_read, preload, cuda_try, cpu_try = failing_cuda
    assert metadata_read["providers"] == ["CPUExecutionProvider"]
    assert preload == {"preloaded": True}
    assert cuda_try["providers"][0] == "CUDAExecutionProvider" and cuda_try["enable_fallback"] == 0
    assert cpu_try["providers"] == ["CPUExecutionProvider"] and cpu_try["enable_fallback"] == 0
    assert cpu_try["disabled_optimizers"] == cuda_try["disabled_optimizers"]


def test_a_failing_cuda_session_is_an_error_when_cuda_was_asked_for(
    tiny_export: ExportResult, failing_cuda: list[dict]
) -> None:
    with pytest.raises(UserError, match="could not open .* with CUDAExecutionProvider.*no CUDA-capable device"):
        OnnxEmbedder(tiny_export.path, provider="cuda")
    failing_cuda.clear()
    OnnxEmbedder(tiny_export.path, provider="cpu")
    assert [call.get("providers") for call in failing_cuda] == [["CPUExecutionProvider"]] * 2  # metadata, session


class ConstantEmbedder:
    """Decodes a file to its first byte as one float and embeds a batch as itself: easy to check by hand."""

    def load(self, path: Path) -> np.ndarray:
        data = path.read_bytes()
        if not data.startswith(b"ok"):
            raise OSError("not an image")
        return np.array([float(data[2])], dtype=np.float32)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        return batch


def test_embed_paths_keeps_the_order_and_skips_or_raises_on_a_bad_file(tmp_path: Path) -> None:
    from replearn.embedding.batches import embed_paths

    paths = []
    for index, content in enumerate([b"ok\x01", b"bad", b"ok\x03", b"ok\x04", b"ok\x05"]):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(content)
    skipped = embed_paths(ConstantEmbedder(), paths, batch_size=2, workers=2)
    assert skipped.kept == [0, 2, 3, 4]
    assert skipped.embeddings.ravel().tolist() == [1.0, 3.0, 4.0, 5.0]
    assert skipped.failures == [(1, "OSError: not an image")]
    with pytest.raises(UserError, match=r"cannot read image .*1\.png: OSError: not an image"):
        embed_paths(ConstantEmbedder(), paths, batch_size=2, on_error="raise")
