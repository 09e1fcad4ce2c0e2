"""The `export` stage: a training checkpoint to one self-describing ONNX file, parity-checked.

The exported graph takes "images" (N, 3, S, S) float32 RGB in [0, 1] with N dynamic and S fixed,
and returns "embeddings" (N, D), L2-normalised: normalisation by mean/std happens inside the
graph, exactly as in the PyTorch model, so a runtime only decodes and resizes. Everything else a
runtime needs (input size, resize mode, mean/std, threshold, classes, provenance) travels in
the file's metadata_props.

Exporter: torch.export-based (dynamo) by default. On this model it yields about 220 nodes
against about 640 for the TorchScript exporter, because shapes are resolved at export time
instead of being recomputed with Shape/Gather/Concat chains. Both run equally fast in
onnxruntime (benchmarks/export.py), but dynamic int8 quantisation keeps the dynamo graph within
cosine 0.9999 of eager PyTorch while the TorchScript graph collapses (cosine about 0.4), and it
is the exporter PyTorch maintains (TorchScript export is deprecated since PyTorch 2.9). The
TorchScript exporter stays selectable (export.exporter) for backbones torch.export cannot trace.
Dynamo emits opset 18 at least, so that is the default opset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from PIL import Image
from rich.console import Group
from rich.text import Text

from replearn import __version__
from replearn.artifacts.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata, Precision
from replearn.artifacts.threshold import NOT_CALIBRATED, Calibration
from replearn.atomic import atomic_path
from replearn.config import Config, ExportConfig, ResizeConfig
from replearn.console import results_table
from replearn.data.images import DECODE_ERRORS, image_to_array, load_image
from replearn.data.preprocess import PreprocessSummary
from replearn.embedding.onnx import OnnxEmbedder, list_images
from replearn.errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HASH_CHARS = 16
# Variants trade accuracy for size/speed: their parity is reported, and only a collapse fails the export.
VARIANT_MIN_COSINE = 0.95


@dataclass(frozen=True)
class Parity:
    """How far onnxruntime's embeddings are from eager PyTorch's on the same batch."""

    images: int
    max_abs_diff: float
    min_cosine: float


@dataclass
class ExportResult:
    """The exported file, what it says about itself, and the parity of each file written."""

    path: Path
    metadata: ModelMetadata
    exporter: str
    opset: int
    parity: Parity
    variants: dict[str, tuple[Path, Parity]] = field(default_factory=dict)

    def __rich__(self) -> Group:
        """Each file's size and parity with eager PyTorch, then what the metadata records."""
        rows = (
            (path.name, f"{path.stat().st_size / 1e6:.1f}", f"{parity.max_abs_diff:.2e}", f"{parity.min_cosine:.6f}")
            for path, parity in [(self.path, self.parity), *self.variants.values()]
        )
        table = results_table(
            f"{self.exporter} export to {self.path.parent}, opset {self.opset}, parity on {self.parity.images} images",
            ("file", "MB", "max abs diff", "min cosine"),
            *rows,
        )
        metadata, threshold = self.metadata, self.metadata.threshold
        return Group(
            table,
            Text(
                f"embedding dim {metadata.embedding_dim}, {len(metadata.classes)} classes, "
                f"threshold {'not set' if threshold is None else f'{threshold:.4f}'}, data {metadata.data_version}"
            ),
        )


def measure_parity(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Max absolute difference over all values and the smallest per-row cosine similarity.

    >>> measure_parity(np.array([[1.0, 0.0]]), np.array([[0.6, 0.8]]))
    Parity(images=1, max_abs_diff=0.8, min_cosine=0.6)
    """
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12)
    return Parity(
        images=len(reference),
        max_abs_diff=round(float(np.abs(reference - candidate).max()), 9),
        min_cosine=round(float(cosine.min()), 9),
    )


def check_parity(parity: Parity, config: ExportConfig, what: str) -> None:
    """Fail with the numbers when the exported graph does not reproduce eager PyTorch."""
    if parity.max_abs_diff > config.max_abs_diff or parity.min_cosine < config.min_cosine:
        raise UserError(
            f"{what} does not match eager PyTorch on {parity.images} images: max abs diff "
            f"{parity.max_abs_diff:.3g} (allowed {config.max_abs_diff:.3g}), min cosine "
            f"{parity.min_cosine:.6f} (required {config.min_cosine}); nothing was written"
        )


def hash_config(config: Config) -> str:
    """A short, stable fingerprint of every setting the model was trained with."""
    text = json.dumps(config.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def describe_data(summary: PreprocessSummary | None, data_version: str | None) -> str:
    """The given version string, else the one preprocessing recorded (`summary`, its preprocess.json), else 'unknown'.

    Read from preprocess.json (a hash of splits.csv), never recomputed: one data version from preprocessing on.
    """
    if data_version:
        return data_version
    return "unknown" if summary is None else f"splits-{summary.data_version}"


def load_parity_batch(images_dir: Path | None, resize: ResizeConfig, count: int) -> np.ndarray:
    """Up to `count` real images, spread evenly over the sorted folder, as the model's input.

    Without a folder the batch is seeded uniform noise: the graph is still checked, but on
    inputs unlike real images, so a warning says so.
    """
    size = resize.size
    if images_dir is None:
        log.warning("no --images folder given: the parity check runs on random inputs, not real images")
        return np.random.default_rng(0).random((count, 3, size, size), dtype=np.float32)
    extensions = set(Image.registered_extensions())
    names = [name for name in list_images(images_dir) if Path(name).suffix.lower() in extensions]
    picks = sorted({int(i) for i in np.linspace(0, len(names) - 1, count).round()}) if names else []
    arrays = []
    for index in picks:
        try:
            arrays.append(image_to_array(load_image(images_dir / names[index], resize)))
        except DECODE_ERRORS as error:  # a broken file must not stop the export; the others still check parity
            log.warning("parity batch: skipped %s: %s", images_dir / names[index], error)
    if not arrays:
        raise UserError(f"found no readable images in {images_dir} for the parity check")
    return np.stack(arrays)


@contextmanager
def transformer_fast_path_disabled() -> Iterator[None]:
    """The fused MHA fast path and nested tensors are eager-only kernels that exporters cannot trace."""
    import torch

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def trace_to_onnx(model: torch.nn.Module, example: torch.Tensor, config: ExportConfig) -> onnx.ModelProto:
    """Export with a dynamic batch axis and a fixed image size, returning the in-memory graph."""
    import torch

    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):  # per-rewrite INFO lines drown the progress log
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with transformer_fast_path_disabled(), torch.no_grad():
        if config.exporter == "dynamo":
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=config.opset,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                optimize=True,
                verbose=False,
            )
            if program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            return program.model_proto
        with tempfile.TemporaryDirectory(prefix="replearn-export-") as scratch, warnings.catch_warnings():
            # The image size is fixed by design, so shape checks the tracer freezes into constants are correct.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            path = Path(scratch) / "model.onnx"
            torch.onnx.export(
                model,
                (example,),
                path,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=config.opset,
                dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
            return onnx.load(str(path))


def save_with_metadata(proto: onnx.ModelProto, metadata: ModelMetadata, target: Path) -> None:
    """Replace metadata_props with `metadata`, check the graph and write it as one file."""
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "replearn", __version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(target))


def onnx_embeddings(path: Path, batch: np.ndarray) -> np.ndarray:
    """What the torch-free runtime computes for `batch`, on the CPU."""
    return OnnxEmbedder(path, provider="cpu").embed_arrays(batch)


@contextmanager
def root_logger_quiet() -> Iterator[None]:
    """onnxruntime.quantization logs a line per tensor on the root logger; keep its warnings and errors only."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def write_int8(source: Path, metadata: ModelMetadata, target: Path) -> None:
    """Dynamic int8 quantisation of the weight matrices of the transformer and head.

    Only MatMul/Gemm nodes whose second input is a weight are quantised: attention's
    activation-by-activation products lose too much when both sides are quantised on the fly.
    Convolutions stay float: onnxruntime's ConvInteger is slower than its float convolution on
    CPUs, so quantising the ResNet would cost speed and accuracy for nothing but size.
    Weights use 7 bits (reduce_range): on CPUs without VNNI (AVX2, AVX-512 before Cascade Lake)
    onnxruntime's u8s8 kernel saturates full-range weights. On a 2-core AVX2 machine the tiny
    test model's variant fell to cosine 0.905 to PyTorch with 8 bits and kept 0.99989 with 7, and
    the file is exported once but runs on whatever CPU an inference host has.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(source))
    # The dynamo exporter's value_info disagrees with onnx shape inference on some MatMul shapes, which the
    # quantizer re-runs strictly; the shapes are re-inferred from the graph itself without it.
    del proto.graph.value_info[:]
    weights = {initializer.name for initializer in proto.graph.initializer}
    nodes = [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    with root_logger_quiet():
        quantize_dynamic(proto, target, nodes_to_quantize=nodes, weight_type=QuantType.QInt8, reduce_range=True)
    save_with_metadata(onnx.load(str(target)), metadata, target)


def write_fp16(source: Path, metadata: ModelMetadata, target: Path) -> None:
    """float16 weights and activations, float32 input and output so callers feed the same arrays.

    Uses the converter bundled with onnxruntime (onnxruntime.transformers.float16, the same code
    as onnxconverter-common), so no extra dependency is needed. Meant for GPUs: onnxruntime's
    CPU kernels compute most float16 ops by casting, so on a CPU it is smaller but not faster.
    """
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
    converted.graph.sort()  # the converter appends its input casts after their consumers
    save_with_metadata(onnx_ir.to_proto(converted), metadata, target)


VARIANT_WRITERS = {"int8": write_int8, "fp16": write_fp16}


def variant_path(out_path: Path, variant: str) -> Path:
    """model.onnx -> model.int8.onnx / model.fp16.onnx, beside the float32 file."""
    return out_path.with_name(f"{out_path.stem}.{variant}{out_path.suffix}")


def export_model(
    config: ExportConfig,
    model: torch.nn.Module,
    train_config: Config,
    classes: list[str],
    out_path: Path,
    batch: np.ndarray,
    data_version: str,
    calibration: Calibration = NOT_CALIBRATED,
    data_wide: bool | None = None,
) -> ExportResult:
    """A trained model (eval mode, on the CPU) -> parity-checked ONNX file with metadata (plus int8/fp16 variants).

    Takes values, reads no file: stages/export.py loads the checkpoint, the parity batch and the
    data version. train_config: the config the model was trained with (input size, resize mode, its
    hash); batch: model inputs for the parity check (`load_parity_batch`); calibration: evaluation's
    threshold, resolution and cluster threshold, stored in the metadata, as is data_wide (whether preprocess
    found the training data wide, which sets the cluster stage's min_size). All files are renamed into
    place together, and only when every check passed.
    """
    import torch

    from replearn.training.backbones import imagenet_statistics

    with torch.no_grad():
        reference = model(torch.from_numpy(batch)).numpy()
    # The statistics the model normalises with inside the graph (those of its backbone's ImageNet weights).
    mean, std = imagenet_statistics(train_config.train.model.backbone.name)
    # torch.export specialises a dimension seen as 1, so the traced example has at least two images.
    example = torch.from_numpy(np.concatenate([batch, batch]) if len(batch) < 2 else batch)
    metadata = ModelMetadata(
        input_size=train_config.preprocess.resize.size,
        channel_order="RGB",
        mean=mean,
        std=std,
        embedding_dim=int(reference.shape[1]),
        threshold=calibration.threshold,
        resolution=calibration.resolution,
        cluster_threshold=calibration.cluster_threshold,
        wide=data_wide,
        classes=tuple(classes),
        replearn_version=__version__,
        config_hash=hash_config(train_config),
        data_version=data_version,
        resize_mode=train_config.preprocess.resize.mode,
        precision="fp32",
    )
    log.info("exporting to %s with the %s exporter, opset %d", out_path, config.exporter, config.opset)
    proto = trace_to_onnx(model, example, config)
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    requested: tuple[tuple[Precision, bool], ...] = (("int8", config.quantize == "int8"), ("fp16", config.fp16))
    variants: dict[str, tuple[Path, Parity]] = {}
    with ExitStack() as stack:
        temporary = stack.enter_context(atomic_path(out_path))
        save_with_metadata(proto, metadata, temporary)
        parity = measure_parity(reference, onnx_embeddings(temporary, batch))
        check_parity(parity, config, f"the exported graph {out_path}")
        for variant in (name for name, enabled in requested if enabled):
            target = variant_path(out_path, variant)
            variant_temporary = stack.enter_context(atomic_path(target))
            VARIANT_WRITERS[variant](temporary, replace(metadata, precision=variant), variant_temporary)
            variant_parity = measure_parity(reference, onnx_embeddings(variant_temporary, batch))
            if variant_parity.min_cosine < VARIANT_MIN_COSINE:
                raise UserError(
                    f"the {variant} variant collapsed: min cosine {variant_parity.min_cosine:.4f} to eager PyTorch "
                    f"(needs {VARIANT_MIN_COSINE}); nothing was written, export without it"
                )
            variants[variant] = (target, variant_parity)
    return ExportResult(out_path, metadata, config.exporter, opset, parity, variants)
