"""The CUDA path on a real GPU: each precision, resume across devices, export, onnxruntime's CUDA provider.

Every test is marked `gpu`; conftest skips it with the reason where the hardware is missing (no CUDA
device, or an onnxruntime without its CUDA provider), so `pytest -m gpu` on a CPU machine lists
what it skipped and why. DDP over NCCL is in test_distributed.py, beside its gloo twin.
`benchmarks/gpu_check.sh` runs these on a GPU host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from replearn.artifacts.checkpoint import read_checkpoint
from replearn.catalogue.read import current_assignments
from replearn.cli import app
from replearn.config import Config, load_config
from replearn.errors import UserError
from replearn.training.loop import TrainResult, resolve_precision
from replearn.training.model import load_model
from replearn.training.train import train
from test_train import TINY as TRAIN_TINY
from test_train import rows

if TYPE_CHECKING:
    from replearn.embedding.onnx import EmbeddingResult
    from replearn.export.onnx_export import ExportResult

pytestmark = pytest.mark.gpu

TINY = [*TRAIN_TINY, "train.devices=cuda", "train.iterations=30", "train.checkpoint_every=15"]


def cuda_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def losses(out_dir: Path) -> list[float]:
    return [float(row["loss"]) for row in rows(out_dir)]


@pytest.fixture(scope="module", params=["fp32", "bf16", "fp16"])
def cuda_run(request: pytest.FixtureRequest, tiny_preprocessed: Path, tmp_path_factory: pytest.TempPathFactory):
    """30 iterations on GPU 0 at one precision (fp16 with the gradient scaler, whose first steps may skip)."""
    precision = request.param
    out = tmp_path_factory.mktemp(f"cuda-{precision}") / "run"
    return precision, train(cuda_config(f"train.precision={precision}"), tiny_preprocessed, out)


def test_training_on_cuda_lowers_the_loss_at_each_precision(cuda_run) -> None:
    precision, result = cuda_run
    assert result.summary["device"] == "cuda:0" and result.summary["precision"] == precision
    values = losses(result.out_dir)
    assert len(values) == 30 and all(np.isfinite(values))
    assert np.mean(values[-5:]) < np.mean(values[:5])
    scaler = read_checkpoint(result.last_checkpoint)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # the scaler runs (and is saved) for fp16 alone


def resume(result: TrainResult, preprocessed: Path, tmp_path: Path, *overrides: str) -> TrainResult:
    """Continue a copy of the 30-iteration run to 40 iterations."""
    run = tmp_path / "run"
    shutil.copytree(result.out_dir, run)
    return train(cuda_config(*overrides, "train.iterations=40"), preprocessed, run, resume=True)


def test_a_cuda_checkpoint_resumes_on_cuda(cuda_run, tiny_preprocessed: Path, tmp_path: Path) -> None:
    precision, result = cuda_run
    resumed = resume(result, tiny_preprocessed, tmp_path, f"train.precision={precision}")
    assert resumed.summary["resumed_from"] == 30 and resumed.summary["device"] == "cuda:0"
    values = losses(resumed.out_dir)
    assert values[:30] == losses(result.out_dir) and len(values) == 40 and all(np.isfinite(values))


def test_a_cuda_checkpoint_resumes_on_the_cpu(cuda_run, tiny_preprocessed: Path, tmp_path: Path) -> None:
    """devices may change on resume; fp16 may not go to the CPU, and says so."""
    precision, result = cuda_run
    overrides = (f"train.precision={precision}", "train.devices=cpu")
    if precision == "fp16":
        with pytest.raises(UserError, match="fp16 needs a CUDA device"):
            resume(result, tiny_preprocessed, tmp_path, *overrides)
        return
    resumed = resume(result, tiny_preprocessed, tmp_path, *overrides)
    assert resumed.summary["resumed_from"] == 30 and resumed.summary["device"] == "cpu"
    assert read_checkpoint(resumed.last_checkpoint)["iteration"] == 40
    assert all(np.isfinite(losses(resumed.out_dir)))


def test_a_cuda_checkpoint_loads_on_the_cpu_with_the_same_embeddings(cuda_run) -> None:
    _, result = cuda_run
    images = torch.rand(4, 3, 32, 32)
    on_gpu, _, _ = load_model(result.best_checkpoint, device="cuda")
    on_cpu, _, _ = load_model(result.best_checkpoint, device="cpu")
    with torch.no_grad():
        gpu_embeddings = on_gpu(images.cuda()).cpu()
        cpu_embeddings = on_cpu(images)
    cosine = torch.nn.functional.cosine_similarity(gpu_embeddings, cpu_embeddings)
    assert float(cosine.min()) >= 0.999  # cuDNN may convolve in TF32


def test_auto_precision_is_bf16_from_compute_capability_8() -> None:
    device = torch.device("cuda", 0)
    major = torch.cuda.get_device_properties(device).major
    assert resolve_precision("auto", device) == ("bf16" if major >= 8 else "fp16")


def test_export_of_a_cuda_trained_checkpoint_passes_parity(cuda_run, tiny_preprocessed: Path, tmp_path: Path) -> None:
    from replearn.stages.export import stage

    _, result = cuda_run
    exported = stage(Config(), result.best_checkpoint, tmp_path / "model.onnx", tiny_preprocessed)
    assert exported.parity.min_cosine > 0.9999 and exported.metadata.embedding_dim == 32


def embed_without_torch(model: Path, images: Path, out: Path, provider: str) -> dict:
    """`replearn embed` in a fresh interpreter where torch cannot be imported: CUDA must come from preload_dlls."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from replearn.cli import app\n"
        f"app(['embed', {str(model)!r}, {str(images)!r}, {str(out)!r}, '--provider', {provider!r}],"
        " standalone_mode=False)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "embed.json").read_text())


@pytest.fixture(scope="module")
def inbox(chars_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight images of each of four classes, in class folders."""
    root = tmp_path_factory.mktemp("gpu-inbox") / "inbox"
    for class_dir in sorted(chars_dir.iterdir())[:4]:
        shutil.copytree(class_dir, root / class_dir.name)
    return root


@pytest.fixture(scope="module")
def cpu_embeddings(tiny_export: ExportResult, inbox: Path, tmp_path_factory: pytest.TempPathFactory) -> EmbeddingResult:
    """The fp32 model's embeddings of the inbox on the CPU provider: the reference of both variants."""
    from replearn.embedding.onnx import read_embeddings

    out = tmp_path_factory.mktemp("cpu-embeddings") / "out"
    embed_without_torch(tiny_export.path, inbox, out, "cpu")
    return read_embeddings(out)


@pytest.mark.gpu(onnxruntime=True)
@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_embed_on_the_cuda_provider_matches_the_cpu_provider(
    tiny_export: ExportResult, inbox: Path, cpu_embeddings: EmbeddingResult, tmp_path: Path, variant: str
) -> None:
    from replearn.embedding.onnx import read_embeddings

    model = tiny_export.path if variant == "fp32" else tiny_export.variants["fp16"][0]
    summary = embed_without_torch(model, inbox, tmp_path / "cuda", "cuda")
    assert summary["providers"][0] == "CUDAExecutionProvider" and summary["failures"] == 0
    on_gpu, on_cpu = read_embeddings(tmp_path / "cuda"), cpu_embeddings
    assert on_gpu.paths == on_cpu.paths and len(on_gpu.paths) == 32
    cosine = np.sum(on_gpu.embeddings * on_cpu.embeddings, axis=1)
    assert cosine.min() >= 0.999


@pytest.mark.gpu(onnxruntime=True)
def test_cluster_on_cuda_embeddings_gives_the_cpu_clusters(
    tiny_export: ExportResult, inbox: Path, tmp_path: Path
) -> None:
    for provider in ("cuda", "cpu"):
        command = ["--set", f"embed.provider={provider}", "cluster", str(tiny_export.path), str(inbox)]
        result = CliRunner().invoke(app, [*command, str(tmp_path / provider)])
        assert result.exit_code == 0, result.output

    def clusters(out: Path) -> dict[str, int]:
        table = current_assignments(out)
        return dict(zip(table["path"], table["cluster_id"], strict=True))

    on_gpu = clusters(tmp_path / "cuda")
    assert len(on_gpu) == 32 and on_gpu == clusters(tmp_path / "cpu")
