"""What the steps hand each other: artifact names from one enum, small typed references, and model files.

Image folders never travel through the artifact store (copying them would cost more than the
steps): a `FolderRef` carries the path and a digest of the content, and the digest is what
ZenML's cache key sees. Checkpoints and ONNX models are real artifacts: `ModelFile`'s
materializer copies the file into the artifact store, so a model version keeps its files even
after `outputs/` is cleaned, and a remote orchestrator can load them anywhere. Plots travel the same
way (`PlotFiles`), so that the dashboard, which reads only the artifact store, shows each one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from replearn.artifacts.hashing import sha256_file
from replearn.errors import UserError


class ArtifactName(StrEnum):
    DATASET = "dataset"
    VALIDATION_REPORT = "validation_report"
    PREPROCESSED = "preprocessed"
    CHECKPOINT = "checkpoint"
    TRAIN_SUMMARY = "train_summary"
    METRICS = "metrics"
    THRESHOLD = "threshold"
    RESOLUTION = "resolution"
    CLUSTER_THRESHOLD = "cluster_threshold"
    EVALUATION_PLOTS = "evaluation_plots"
    ONNX_MODEL = "onnx_model"
    PROMOTED = "promoted"
    PRODUCTION_MODEL = "production_model"
    CLUSTER_RUN = "cluster_run"
    CLUSTER_REPORT = "cluster_report"


class FolderRef(BaseModel):
    """A folder outside the artifact store, named by a digest of what it holds.

    `file_list` names the files of the folder to use (validation's good_files.csv) when not all are.
    """

    path: str
    digest: str
    file_list: str | None = None

    def checked(self) -> Path:
        """The folder, which must still exist: a cache hit can point at a folder deleted since."""
        path = Path(self.path)
        if not path.is_dir():
            raise UserError(f"{path} is gone; rerun the pipeline with caching disabled (enable_cache: false)")
        return path


class ModelFile(BaseModel):
    """A model file (PyTorch checkpoint or ONNX) on the local disk, with its content hash."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> ModelFile:
        return cls(path=str(path), sha256=sha256_file(path))


class ModelFileMaterializer(BaseMaterializer):
    """Copies the file into the artifact store; loading gives a local copy of it."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ModelFile,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def _stored(self, suffix: str) -> str:
        return os.path.join(self.uri, f"model{suffix}")

    def save(self, data: ModelFile) -> None:
        source = Path(data.path)
        fileio.copy(str(source), self._stored(source.suffix), overwrite=True)

    def load(self, data_type: type[Any]) -> ModelFile:
        stored = next(name for name in fileio.listdir(self.uri) if str(name).startswith("model"))
        remote = os.path.join(self.uri, str(stored))
        if os.path.exists(remote):
            return ModelFile.of(Path(remote))
        with self.get_temporary_directory(delete_at_exit=False) as folder:
            local = Path(folder) / str(stored)
            with fileio.open(remote, "rb") as source, local.open("wb") as target:
                shutil.copyfileobj(source, target)
            return ModelFile.of(local)

    def compute_content_hash(self, data: ModelFile) -> str | None:
        return data.sha256

    def extract_metadata(self, data: ModelFile) -> dict[str, Any]:
        return {"sha256": data.sha256, "bytes": Path(data.path).stat().st_size}


class PlotFiles(BaseModel):
    """PNG plots on the local disk, in the order they are best read; their file names are distinct."""

    paths: list[str]

    def names(self) -> list[str]:
        return [Path(path).name for path in self.paths]


class PlotFilesMaterializer(BaseMaterializer):
    """Copies each plot into the artifact store and names each copy a visualization, so the dashboard shows it.

    The dashboard lists one artifact's visualizations by file name and shows the first; loading gives the
    copies (local paths, or temporary copies of a remote store's files).
    """

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (PlotFiles,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    ORDER_FILE = "plots.json"

    def save(self, data: PlotFiles) -> None:
        names = data.names()
        if len(set(names)) != len(names):
            raise ValueError(f"plots with the same file name: {names}")
        for path, name in zip(data.paths, names, strict=True):
            fileio.copy(path, os.path.join(self.uri, name), overwrite=True)
        with fileio.open(os.path.join(self.uri, self.ORDER_FILE), "w") as order:
            order.write(json.dumps(names))

    def load(self, data_type: type[Any]) -> PlotFiles:
        with fileio.open(os.path.join(self.uri, self.ORDER_FILE), "r") as order:
            names: list[str] = json.loads(order.read())
        stored = [os.path.join(self.uri, name) for name in names]
        if all(os.path.exists(path) for path in stored):
            return PlotFiles(paths=stored)
        with self.get_temporary_directory(delete_at_exit=False) as folder:
            for remote, name in zip(stored, names, strict=True):
                with fileio.open(remote, "rb") as source, (Path(folder) / name).open("wb") as target:
                    shutil.copyfileobj(source, target)
            return PlotFiles(paths=[str(Path(folder) / name) for name in names])

    def save_visualizations(self, data: PlotFiles) -> dict[str, VisualizationType]:
        return {os.path.join(self.uri, name).replace("\\", "/"): VisualizationType.IMAGE for name in data.names()}

    def compute_content_hash(self, data: PlotFiles) -> str | None:
        listing = [f"{Path(path).name} {sha256_file(Path(path))}" for path in data.paths]
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()

    def extract_metadata(self, data: PlotFiles) -> dict[str, Any]:
        return {"plots": ", ".join(data.names())}
