"""Embed images with an exported ONNX model: onnxruntime, numpy and Pillow, never torch.

This is the runtime of the `embed` and `cluster` stages, so an inference image stays small and
starts fast. Images are decoded and resized by `replearn.data.images.load_image`, the same
function preprocessing uses, with the size and resize mode read from the model's own metadata:
a model cannot be fed images prepared differently from the ones it was trained on.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from rich.console import Group
from rich.text import Text

from replearn.artifacts.metadata import ModelMetadata
from replearn.atomic import atomic_directory
from replearn.config import EmbedConfig
from replearn.console import results_table
from replearn.data.images import image_to_array, load_image
from replearn.embedding.batches import embed_paths
from replearn.errors import UserError

log = logging.getLogger(__name__)

Provider = Literal["auto", "cuda", "cpu"]
ORT_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# onnxruntime's own default severity (warning); restored after a quiet CUDA probe.
ORT_DEFAULT_SEVERITY = 2
ORT_FATAL_ONLY = 4
FAILURES_FILE = "failures.csv"  # path, error of every file the embed stage skipped


@dataclass
class EmbeddingResult:
    """Row i of `embeddings` belongs to `paths[i]` (relative to the embedded folder, posix)."""

    paths: list[str]
    embeddings: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)
    out_dir: Path | None = None  # where the embed stage wrote them
    seconds: float = 0.0  # how long embedding took

    def __rich__(self) -> Group:
        rate = f"{len(self.paths) / self.seconds:,.1f}" if self.seconds > 0 else "-"
        table = results_table(
            f"embeddings in {self.out_dir}",
            ("images", "dimension", "skipped", "images/s"),
            (f"{len(self.paths):,}", str(self.embeddings.shape[1]), str(len(self.failures)), rate),
        )
        if not self.failures:
            return Group(table)
        where = Path(self.out_dir or ".") / FAILURES_FILE
        return Group(
            table, Text.assemble((f"{len(self.failures)} unreadable file(s) skipped", "yellow"), f": listed in {where}")
        )


class OnnxEmbedder:
    """An onnxruntime session over a replearn model, plus the metadata that says how to feed it.

    provider: "auto" tries CUDA and falls back to the CPU without noise; "cuda" fails when CUDA
    cannot be used; "cpu" never touches the GPU. threads: intra-op threads, 0 lets onnxruntime decide.
    """

    def __init__(self, model_path: Path | str, provider: Provider = "auto", threads: int = 0) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise UserError(f"model {self.model_path} does not exist")
        self.metadata = read_metadata(self.model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The NCHWc layout rewrite makes float32 convolutions about 4x faster on CPUs, but it crashes
        # onnxruntime (segfault while creating the session) on float16 graphs.
        disabled = ["NchwcTransformer"] if self.metadata.precision == "fp16" else []
        wanted = self._providers(provider)
        if ORT_PROVIDERS["cuda"] in wanted:
            load_cuda_libraries()
        try:
            self.session = self._session(wanted, options, disabled, quiet=provider == "auto")
        except UserError:
            if provider != "auto" or len(wanted) == 1:
                raise
            log.info("onnxruntime could not start CUDA for %s; using the CPU", self.model_path)
            self.session = self._session([ORT_PROVIDERS["cpu"]], options, disabled, quiet=False)
        self.providers: list[str] = self.session.get_providers()
        if provider == "cuda" and ORT_PROVIDERS["cuda"] not in self.providers:
            raise UserError(
                "provider cuda was requested but onnxruntime could not use CUDA "
                "(no GPU, or CUDA/cuDNN libraries missing); use --provider cpu or auto"
            )
        log.debug("onnxruntime providers for %s: %s", self.model_path, self.providers)
        model_input = self.session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32

    def _session(
        self, providers: list[str], options: ort.SessionOptions, disabled: list[str], quiet: bool
    ) -> ort.InferenceSession:
        """A session on exactly these providers.

        onnxruntime's own fallback is off: it prints a banner, drops disabled_optimizers on its CPU
        retry (which crashes fp16 models) and would switch a failing GPU run to the CPU mid-way.
        quiet: without the CUDA libraries onnxruntime logs an error per session before skipping CUDA.
        """
        if quiet:
            ort.set_default_logger_severity(ORT_FATAL_ONLY)
        try:
            return ort.InferenceSession(
                str(self.model_path), options, providers=providers, disabled_optimizers=disabled, enable_fallback=0
            )
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
            names = ", ".join(providers)
            raise UserError(f"onnxruntime could not open {self.model_path} with {names}: {error}") from None
        finally:
            if quiet:
                ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)

    @staticmethod
    def _providers(provider: Provider) -> list[str]:
        if provider == "cpu":
            return [ORT_PROVIDERS["cpu"]]
        available = ort.get_available_providers()
        if provider == "cuda" and ORT_PROVIDERS["cuda"] not in available:
            raise UserError(f"provider cuda was requested but this onnxruntime build offers only {available}")
        return [name for name in (ORT_PROVIDERS["cuda"], ORT_PROVIDERS["cpu"]) if name in available]

    def load(self, path: Path) -> np.ndarray:
        """One image as the model's float32 CHW input, decoded and resized as in preprocessing."""
        return image_to_array(load_image(path, self.metadata.resize))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 in [0, 1] -> (N, D) float32 L2-normalised embeddings."""
        (output,) = self.session.run(None, {self.input_name: batch.astype(self.input_dtype, copy=False)})
        return np.asarray(output, dtype=np.float32)


@functools.cache
def load_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed with onnxruntime-gpu (or torch).

    onnxruntime's CUDA provider does not look for them in site-packages: importing torch loads them,
    but this runtime never imports torch, so without this step CUDA is never used. What cannot be
    loaded is logged; the session then runs on the CPU (auto) or says that CUDA is unusable (cuda).
    """
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ort.preload_dlls()
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())


def read_metadata(model_path: Path) -> ModelMetadata:
    """The replearn metadata of an ONNX file, read through an unoptimised CPU session (cheap, never crashes)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(model_path), options, providers=[ORT_PROVIDERS["cpu"]])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise UserError(f"{model_path} is not a model onnxruntime can load: {error}") from None
    return ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, source=str(model_path))


def list_images(folder: Path) -> list[str]:
    """Every non-hidden file below `folder`, relative and sorted: each is tried, failures are reported."""
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist or is not a folder")
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = Path(root).relative_to(folder)
        found.extend((relative / name).as_posix() for name in files if not name.startswith("."))
    return sorted(found)


def embed_folder(
    model: OnnxEmbedder | Path | str,
    folder: Path | str,
    batch_size: int = 64,
    workers: int = 0,
    names: Sequence[str] | None = None,
) -> EmbeddingResult:
    """Embed every readable image below `folder` (or the `names` below it); unreadable ones are listed in `failures`.

    Paths in the result and in `failures` are relative to `folder`, as `names` are. Decoding runs on
    `workers` threads one batch ahead of inference (embedding/batches.py), 0 for one per core.
    """
    embedder = model if isinstance(model, OnnxEmbedder) else OnnxEmbedder(model)
    folder = Path(folder)
    names = list_images(folder) if names is None else list(names)
    done = embed_paths(embedder, [folder / name for name in names], batch_size, workers, "skip", f"embedding {folder}")
    failures = [(names[position], reason) for position, reason in done.failures]
    for name, reason in failures:
        log.warning("skipped %s: %s", folder / name, reason)
    dim = embedder.metadata.embedding_dim
    embeddings = done.embeddings if done.kept else np.zeros((0, dim), dtype=np.float32)
    return EmbeddingResult(paths=[names[position] for position in done.kept], embeddings=embeddings, failures=failures)


def write_embeddings(result: EmbeddingResult, out_dir: Path, file_format: Literal["npy", "parquet"]) -> None:
    """npy: embeddings.npy + index.csv (row i = path i); parquet: embeddings.parquet (path, embedding).

    failures.csv (path, error) is written either way, so a reader sees what was left out.
    """
    if file_format == "npy":
        np.save(out_dir / "embeddings.npy", result.embeddings)
        _write_csv(out_dir / "index.csv", ["path"], [[path] for path in result.paths])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = result.embeddings.shape[1]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(result.embeddings.reshape(-1), pa.float32()), dim)
        pq.write_table(pa.table({"path": result.paths, "embedding": vectors}), out_dir / "embeddings.parquet")
    _write_csv(out_dir / FAILURES_FILE, ["path", "error"], [list(item) for item in result.failures])


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_embeddings(out_dir: Path | str) -> EmbeddingResult:
    """Read what `embed_images` wrote, in either format."""
    out_dir = Path(out_dir)
    with (out_dir / FAILURES_FILE).open(newline="", encoding="utf-8") as handle:
        failures = [(row["path"], row["error"]) for row in csv.DictReader(handle)]
    if (out_dir / "embeddings.parquet").is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(out_dir / "embeddings.parquet")
        column = table.column("embedding").combine_chunks()
        embeddings = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
        return EmbeddingResult(table.column("path").to_pylist(), embeddings.astype(np.float32), failures)
    with (out_dir / "index.csv").open(newline="", encoding="utf-8") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    return EmbeddingResult(paths, np.load(out_dir / "embeddings.npy"), failures)


def embed_images(
    config: EmbedConfig, model_path: Path, images_dir: Path, out_dir: Path, force: bool = False
) -> EmbeddingResult:
    """The `embed` stage: embed a folder of images and write the embeddings, index and failures to `out_dir`."""
    embedder = OnnxEmbedder(model_path, provider=config.provider, threads=config.threads)
    if not list_images(images_dir):
        raise UserError(f"image folder {images_dir} holds no files to embed")
    started = time.perf_counter()
    with atomic_directory(out_dir, replace=force) as temporary:
        result = embed_folder(embedder, images_dir, batch_size=config.batch_size, workers=config.workers)
        result.out_dir, result.seconds = out_dir, time.perf_counter() - started
        write_embeddings(result, temporary, config.format)
        summary = {
            "model": str(model_path),
            "images_dir": str(images_dir),
            "images": len(result.paths),
            "failures": len(result.failures),
            "embedding_dim": embedder.metadata.embedding_dim,
            "config_hash": embedder.metadata.config_hash,
            "data_version": embedder.metadata.data_version,
            "format": config.format,
            "providers": embedder.providers,
        }
        (temporary / "embed.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return result
