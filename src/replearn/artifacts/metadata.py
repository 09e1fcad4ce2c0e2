"""What an exported model must carry so that any runtime can use it without the training code.

The values travel in the ONNX file's metadata_props (string key -> string value), so an
inference image needs only onnxruntime to read them. Strings are stored as they are; numbers,
lists and the optional threshold are stored as JSON, so the file reads well in Netron and
parses back losslessly. This module imports neither torch nor onnx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal, cast

from replearn.config import ResizeConfig
from replearn.errors import UserError

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"

ResizeMode = Literal["crop", "pad", "stretch"]
# Keys a model may lack: files exported before them were written.
OPTIONAL_KEYS = ("precision", "resolution", "cluster_threshold", "wide")
# fp32: the exported graph; int8 / fp16: the optional smaller variants written beside it.
Precision = Literal["fp32", "int8", "fp16"]


def _optional_float(text: str) -> float | None:
    """A JSON number or null, as metadata_props store the optional values.

    >>> _optional_float("0.5"), _optional_float("null")
    (0.5, None)
    """
    value = json.loads(text)
    return None if value is None else float(value)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything besides the weights that inference and clustering need to know about a model."""

    input_size: int
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    threshold: float | None
    classes: tuple[str, ...]
    replearn_version: str
    config_hash: str
    data_version: str
    resize_mode: ResizeMode
    # Not in the contract's key list: files without it are the float32 graph.
    precision: Precision = "fp32"
    # Optional too: the cluster stage's Louvain resolution (per connected component) and the threshold
    # its graph is pruned at, calibrated together at or below `threshold` (which decides pairs).
    resolution: float | None = None
    cluster_threshold: float | None = None
    # Optional: whether the training data was wide (many classes of a few images), which sets the cluster
    # stage's min_size (cluster.wide_min_size); None for a model exported without its preprocessed folder.
    wide: bool | None = None

    @property
    def resize(self) -> ResizeConfig:
        """The preprocessing settings the model was trained with, for `load_image`."""
        return ResizeConfig(size=self.input_size, mode=self.resize_mode)

    def to_props(self) -> dict[str, str]:
        """The metadata_props mapping written into the ONNX file."""
        return {key: value if isinstance(value, str) else json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse metadata_props back; a missing or malformed key is a UserError naming `source`."""
        missing = sorted(set(cls.__dataclass_fields__) - set(props) - set(OPTIONAL_KEYS))
        if missing:
            raise UserError(f"{source} lacks replearn metadata {missing}; export it with `replearn export`")
        try:
            mean = tuple(float(v) for v in json.loads(props["mean"]))
            std = tuple(float(v) for v in json.loads(props["std"]))
            classes = json.loads(props["classes"])
            resize_mode = props["resize_mode"]
            if len(mean) != 3 or len(std) != 3:
                raise ValueError("mean and std need three values")
            if resize_mode not in ("crop", "pad", "stretch"):
                raise ValueError(f"unknown resize_mode {resize_mode!r}")
            precision = props.get("precision", "fp32")
            if precision not in ("fp32", "int8", "fp16"):
                raise ValueError(f"unknown precision {precision!r}")
            return cls(
                input_size=int(json.loads(props["input_size"])),
                channel_order=props["channel_order"],
                mean=cast(tuple[float, float, float], mean),
                std=cast(tuple[float, float, float], std),
                embedding_dim=int(json.loads(props["embedding_dim"])),
                threshold=_optional_float(props["threshold"]),
                classes=tuple(str(name) for name in classes),
                replearn_version=props["replearn_version"],
                config_hash=props["config_hash"],
                data_version=props["data_version"],
                resize_mode=cast(ResizeMode, resize_mode),
                precision=cast(Precision, precision),
                resolution=_optional_float(props.get("resolution", "null")),
                cluster_threshold=_optional_float(props.get("cluster_threshold", "null")),
                wide=json.loads(props.get("wide", "null")),
            )
        except (ValueError, TypeError) as error:
            raise UserError(f"{source} has malformed replearn metadata: {error}") from None
