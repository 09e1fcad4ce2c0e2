"""Typed configuration for every stage: the only place where defaults live.

`params.yaml` holds the values a user tunes; anything it leaves out falls back to
the defaults below. Every model forbids unknown keys, so a typo in a config file
is an error that names the key and the closest valid one instead of being ignored.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from replearn.errors import UserError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StrictModel):
    """Where the class folders live and how the bundled demo data is generated."""

    raw_dir: Path = Path("data/raw")
    inbox_dir: Path = Field(Path("data/inbox"), description="New, unlabelled images for the clustering pipeline.")
    outputs_dir: Path = Field(Path("outputs"), description="Where the pipelines write models, metrics and reports.")
    per_class: int = Field(120, ge=1, description="Images per class for the generated demo data.")
    size: int = Field(64, ge=8, description="Side of the generated square images, in pixels.")
    seed: int = Field(0, description="Seed of the generated demo data.")


class ValidateConfig(StrictModel):
    """Thresholds of the Great Expectations suite run on the manifest of the class folders."""

    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"]
    min_width: int = Field(8, ge=1)
    min_height: int = Field(8, ge=1)
    max_pixels: int = Field(89_478_485, ge=1, description="Decompression-bomb guard (Pillow's own default).")
    on_error: Literal["fail", "quarantine"] = Field(
        "fail",
        description="fail: any failed check makes the data invalid; quarantine: list bad files in bad_files.csv, "
        "leave them and classes with fewer than 2 usable images out, and go on.",
    )
    workers: int = Field(0, ge=0, description="Processes for the manifest; 0 means all cores.")
    out_dir: Path = Field(
        Path("outputs/validate"),
        description="Where `replearn validate` writes its report when OUT is not given; outside any DATA_DIR.",
    )


class ResizeConfig(StrictModel):
    """How every image is brought to the model's input size, in preprocessing and at inference alike."""

    size: int = Field(64, ge=8, description="Side of the square output, in pixels.")
    mode: Literal["crop", "pad", "stretch"] = Field(
        "pad",
        description="crop: shorter side to size, then centre crop; pad: longer side to size, "
        "then pad with white; stretch: plain resize, aspect ratio ignored.",
    )


class SplitConfig(StrictModel):
    """Deterministic, stable splits: unseen classes held out, then train/val/test inside seen classes."""

    seed: int = 0
    unseen_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    unseen_classes: list[str] = Field(default_factory=list, description="Overrides unseen_fraction when set.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    group_pattern: str | None = Field(
        r"^([^_]+)_",
        description="Regex on the file name whose first group keeps items together on one side of a split "
        "(in the chars data: the typeface family).",
    )
    test_groups: list[str] = Field(
        default_factory=list,
        description="Groups that are the test split, in place of test_fraction: leave-these-groups-out evaluation.",
    )
    wide: bool | None = Field(
        None,
        description="Wide data (many classes of a few images): seen classes are not forced to give val and test a "
        "group each, and calibration classes are held out (calibration_fraction); null: wide when 200 classes or more "
        "have a median class too small to give val 3 images, and no test_groups are set.",
    )
    calibration_fraction: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Share of the unseen classes held whole in the val split, where evaluate calibrates the cluster "
        "stage on whole classes, as an inbox holds them; null: 0.25 on wide data with at least 40 unseen classes, "
        "else 0.",
    )

    @model_validator(mode="after")
    def _leave_room_for_train(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must stay below 1 to leave images for training "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self


class PreprocessConfig(StrictModel):
    """Resized RGB copies of the class folders and the split table."""

    resize: ResizeConfig = ResizeConfig()
    split: SplitConfig = SplitConfig()
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    workers: int = Field(0, ge=0, description="Threads decoding and resizing; 0 means one per core.")


BackboneName = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "convnext_tiny",
    "efficientnet_b0",
    "regnet_y_400mf",
    "regnet_y_1_6gf",
]


class BackboneConfig(StrictModel):
    """The torchvision classifier whose convolutional trunk turns an image into a feature map.

    The names are torchvision's; replearn.training.backbones says which layers form each trunk and
    which ImageNet weights `weights: imagenet` fetches.
    """

    name: BackboneName = "resnet18"
    weights: str = Field(
        "none",
        description="none | imagenet (torchvision's file: read from the torch hub cache, downloaded there with its "
        "hash check when missing, never when REPLEARN_OFFLINE=1) | path to a state_dict.",
    )
    output_stride: Literal[16, 32] = Field(
        32,
        description="Downsampling of the feature map; 16 keeps 4x more tokens for the transformer "
        "(the last stage runs at stride 1), which helps small inputs.",
    )

    @model_validator(mode="after")
    def _stride_16_needs_a_strided_convolution(self) -> BackboneConfig:
        # ConvNeXt downsamples with 2x2 patchifying convolutions: at stride 1 they would overlap and shrink the map.
        if self.output_stride == 16 and self.name.startswith("convnext"):
            raise ValueError(f"output_stride 16 is not offered for {self.name}; use 32")
        return self


class ModelConfig(StrictModel):
    """Backbone -> 1x1 conv -> positional embeddings -> transformer encoder -> linear -> L2 norm."""

    backbone: BackboneConfig = BackboneConfig()
    d_model: int = Field(128, ge=8)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    pooling: Literal["cls", "mean"] = Field(
        "mean", description="mean of the output tokens, or a learned cls token (slower to train on the chars data)."
    )
    embedding_dim: int = Field(128, ge=2)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


class LossConfig(StrictModel):
    """Circle loss (Sun et al. 2020), with pytorch-metric-learning's CircleLoss(m, gamma) semantics.

    m is the relaxation margin (optimum: positives at 1-m, negatives at m), gamma the scale. The
    paper uses m=0.25, gamma=256 for faces and m=0.4, gamma=80 for fine-grained retrieval. gamma=32
    beat 80 on the chars data; with gamma=32, m=0.4 beat 0.25 on test fonts of a family that
    training never saw, together with 32 classes a batch (docs/train.md).
    """

    margin: float = Field(0.4, ge=0.0, le=1.0)
    gamma: float = Field(32.0, gt=0.0)


Augmentation = Literal[
    "random_resized_crop",
    "flip",
    "color_jitter",
    "rotation",
    "blur",
    "stroke",
    "shear",
    "perspective",
    "elastic",
    "noise",
]


class TrainConfig(StrictModel):
    """PK batches by iterations, optimiser, schedule, checkpoints and hardware."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    classes_per_batch: int = Field(
        32, ge=2, description="P: classes in each batch (per process); a split with fewer puts all of them in each."
    )
    images_per_class: int = Field(4, ge=2, description="K: images of each class in each batch.")
    iterations: int | None = Field(
        None,
        ge=1,
        description="Iterations to train; null (default): follow the data, every training class drawn into "
        "class_draws batches, at least min_iterations, at most what budget_minutes allows.",
    )
    class_draws: int = Field(
        24, ge=1, description="With iterations null: batches each training class is drawn into, on average."
    )
    min_iterations: int = Field(
        600, ge=1, description="With iterations null: the fewest iterations (small datasets such as the chars data)."
    )
    budget_minutes: float = Field(
        20.0,
        gt=0.0,
        description="With iterations null: the training time budget; iterations stop at budget_minutes x 60 / "
        "seconds_per_iteration.",
    )
    seconds_per_iteration: float = Field(
        0.8,
        gt=0.0,
        description="What one iteration costs on the machine the budget is planned for: 0.8 s at the defaults (64 px, "
        "32 x 4 images) on a 2-core CPU in bf16; train_summary.json reports yours.",
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        "adamw", description="adamw, or sgd with momentum (needs grad_clip and a smaller lr with this loss)."
    )
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_iterations: int = Field(100, ge=0)
    grad_clip: float | None = Field(
        None, gt=0.0, description="Max global gradient norm; null (default, AdamW scales steps itself) is off."
    )
    augmentations: list[Augmentation] = Field(
        ["random_resized_crop", "rotation", "color_jitter", "blur"],
        description="Applied in this order, on the fly; flip is off by default since characters have a handedness.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast dtype. auto: bf16 where the hardware computes it natively (CUDA with bf16, CPUs "
        "with AVX512-BF16 or AMX), fp16 on older GPUs, else fp32. fp16 needs CUDA and uses a gradient scaler.",
    )
    devices: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    nproc_per_node: str = Field("1", description="Processes per node: a number, or auto for every visible GPU.")
    sync_batchnorm: bool = Field(False, description="Batch statistics across processes (CUDA only).")
    timeout_minutes: float = Field(
        10.0, gt=0.0, description="A rank waiting longer than this on the others fails instead of hanging."
    )
    checkpoint_every: int = Field(250, ge=1, description="Iterations between checkpoints and validations.")
    batch_size_eval: int = Field(256, ge=1)
    val_max_images: int = Field(
        20_000,
        ge=1,
        description="At most this many train (gallery) and val (query) images each in the validation every "
        "checkpoint_every iterations, evenly spaced over the split table: it runs while other ranks wait.",
    )
    loader_workers: int = Field(
        1, ge=0, description="Processes that augment batches beside training; 0: the training process itself."
    )
    in_memory: bool = Field(True, description="Decode the preprocessed images once into memory; false reads from disk.")
    seed: int = 0


class EvaluateConfig(StrictModel):
    """kNN retrieval metrics and the similarity threshold calibrated for clustering."""

    recall_at: list[int] = [1, 2, 4, 8]
    knn_k: int = Field(13, ge=1, description="Neighbours for the majority-vote kNN classifier (seed 001).")
    batch_size: int = Field(256, ge=1)
    threshold_objective: Literal["f1", "precision"] = Field(
        "f1", description="f1: the threshold of best pairwise F1; precision: the lowest reaching target_precision."
    )
    target_precision: float = Field(0.95, gt=0.0, le=1.0)
    threshold_bins: int = Field(2000, ge=10, description="Similarity bins over [-1, 1]: candidate thresholds.")
    calibration_max_images: int = Field(
        20_000, ge=2, description="Val images used for calibration (a seeded sample above this); pairs grow as N^2."
    )
    memory_mb: float = Field(256.0, gt=0.0, description="Budget for one block of kNN results or pair similarities.")
    embedding_map: Literal["tsne", "pca"] = "tsne"
    map_max_points: int = Field(3000, ge=10, description="Test images drawn on the 2-D map (a seeded sample).")
    worst_queries: int = Field(8, ge=0, description="Rows of the worst-queries grid per subset.")
    worst_neighbors: int = Field(5, ge=1, description="Neighbours shown beside each worst query.")
    seed: int = 0


class ExportConfig(StrictModel):
    """ONNX export and its parity check against eager PyTorch."""

    opset: int = Field(18, ge=17, description="The dynamo exporter emits 18 at least; torchscript can do 17.")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="dynamo: torch.export-based, a leaner graph that also quantises well (see export/)."
    )
    max_abs_diff: float = Field(1e-4, gt=0.0)
    min_cosine: float = Field(0.9999, gt=0.0, le=1.0)
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: also write <name>.int8.onnx (dynamic quantisation)."
    )
    fp16: bool = Field(False, description="Also write <name>.fp16.onnx, for GPUs.")
    parity_images: int = Field(32, ge=1, description="Images in the onnxruntime-vs-PyTorch parity batch.")


class EmbedConfig(StrictModel):
    """The torch-free onnxruntime embedder: `replearn embed` and the embedding half of clustering."""

    batch_size: int = Field(64, ge=1, description="Images per batch.")
    provider: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when usable, else CPU.")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 lets onnxruntime decide.")
    workers: int = Field(0, ge=0, description="Image decoding threads; 0 means one per core.")
    format: Literal["npy", "parquet"] = Field(
        "npy", description="npy: embeddings.npy + index.csv; parquet: embeddings.parquet with a path column."
    )


# Louvain's resolution per connected component when neither cluster.resolution nor the model's
# metadata gives one: the value evaluate calibrated on the chars demo's val split.
DEFAULT_RESOLUTION = 0.3


class ClusterConfig(StrictModel):
    """Similarity graph, clustering method, and the catalogue that keeps cluster ids stable."""

    method: Literal["louvain", "components"] = Field(
        "louvain",
        description="louvain: communities of the kNN graph pruned at the threshold; components: the seed's rule.",
    )
    threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="Similarity that links two images; None: the model's calibrated one."
    )
    resolution: float | None = Field(
        None,
        gt=0.0,
        description=f"Louvain resolution per connected component of the graph; None: the model's, else "
        f"{DEFAULT_RESOLUTION}.",
    )
    min_size: int = Field(
        3,
        ge=1,
        description="Clusters smaller than this go to cluster 0, unclustered (for a model trained on wide data, "
        "wide_min_size does).",
    )
    wide_min_size: int = Field(
        2,
        ge=1,
        description="min_size of the cluster stage for a model trained on wide data (its metadata says so): an "
        "inbox of such classes often holds 2 images of one. Evaluate calibrates with min_size either way.",
    )
    exact_max_n: int = Field(200_000, ge=1, description="Above this many images, approximate kNN builds the graph.")
    neighbors: int = Field(20, ge=1, description="k of the kNN graph (louvain, approximate, or refine=mutual_knn).")
    refine: Literal["none", "mutual_knn"] = Field(
        "none",
        description="components only. mutual_knn: an edge also needs each image in the other's k nearest.",
    )
    approximate_index: Literal["ivf", "hnsw"] = Field("ivf", description="faiss index for the approximate kNN graph.")
    nprobe: int = Field(16, ge=1, description="IVF lists searched per query: higher is slower and more exact.")
    exemplars: int = Field(
        64,
        ge=1,
        description="Latest members kept per cluster; they stand for it when a later batch is clustered, and an "
        "automatic cluster with no more members than this can still be split or dissolved by a run.",
    )
    max_churn: float = Field(
        0.03,
        ge=0,
        le=1,
        description="Most of the images clustered before a run whose cluster id the run may change (merges, splits "
        "and dissolves of automatic clusters); what does not fit waits for a later run.",
    )
    context_exemplars: int = Field(
        8192, ge=1, description="Most exemplars of nearby clusters that join a run's window (at least one each)."
    )
    pool_max: int = Field(
        10_000, ge=0, description="Unclustered images kept for later runs; beyond it the oldest stay in cluster 0."
    )
    block_memory_mb: int = Field(64, ge=1, description="Memory for one block of the exact similarity matrix.")
    seed: int = Field(0, description="Seed of the IVF training sample and of Louvain.")
    report_clusters: int = Field(100, ge=0, description="Clusters with a montage in report.html; the rest get a row.")
    report_samples: int = Field(8, ge=1, description="Images in each cluster's montage.")
    thumbnail_size: int = Field(64, ge=16, description="Side of a montage thumbnail, in pixels.")
    evaluate_labels: bool = Field(
        False, description="The inbox holds class folders: score the clusters against them (pairwise F1, NMI, ...)."
    )


class ScheduleConfig(StrictModel):
    """Scheduled batch clustering through the user's crontab (`make schedule`: pipelines/schedule.py)."""

    cron: str = Field("0 * * * *", description="Crontab expression: five fields or an @-shortcut such as @hourly.")
    log_max_mb: int = Field(
        10,
        ge=1,
        description="A scheduled run that finds outputs/logs/clustering.log over this size first moves it to "
        "clustering.log.1 (replacing the older one), so the two files stay near twice this size.",
    )


class Config(StrictModel):
    """Every stage's section; the shape of params.yaml."""

    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    embed: EmbedConfig = EmbedConfig()
    cluster: ClusterConfig = ClusterConfig()
    schedule: ScheduleConfig = ScheduleConfig()

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ConfigError(UserError):
    """A config file or override that does not fit the models."""


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at `path`, for suggesting keys."""
    model: type[BaseModel] = Config
    for part in path:
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        info = fields.get(str(part))
        annotation = getattr(info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def config_field(key: str) -> FieldInfo:
    """The pydantic field of a dotted config key (sections by their alias): its description documents the key.

    >>> config_field("train.class_draws").description
    'With iterations null: batches each training class is drawn into, on average.'
    """
    *sections, name = key.split(".")
    model = _model_at(tuple(sections))
    fields = {info.alias or field: info for field, info in model.model_fields.items()} if model else {}
    if name not in fields:
        raise KeyError(f"{key} is not a config key")
    return fields[name]


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        location = tuple(item["loc"])
        dotted = ".".join(str(part) for part in location)
        if item["type"] == "extra_forbidden":
            owner = _model_at(location[:-1])
            valid = _valid_keys(owner) if owner else []
            close = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"  unknown key '{dotted}'{hint} (valid keys here: {', '.join(valid)})")
        else:
            lines.append(f"  {dotted}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _parse_override(override: str) -> tuple[list[str], Any]:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{override}' must look like section.key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _set_dotted(values: dict[str, Any], keys: list[str], value: Any, what: str) -> None:
    node = values
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `section.key=value` overrides (values parsed as YAML) into a nested mapping."""
    for override in overrides:
        keys, value = _parse_override(override)
        _set_dotted(values, keys, value, f"override '{override}'")
    return values


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """`config` with dotted keys set, validated like a params file; a value of None leaves its key alone.

    The CLI's per-command options (`replearn train --iterations 50`) go through here, so they are
    checked exactly as the same key in params.yaml or `--set` would be.

    >>> with_values(load_config(None), {"train.iterations": 7, "train.lr": None}).train.iterations
    7
    """
    data = config.model_dump(mode="json", by_alias=True)
    for dotted, value in values.items():
        if value is not None:
            _set_dotted(data, dotted.split("."), value, f"option {dotted}")
    return build_config(data, "command-line options")


def build_config(values: dict[str, Any], source: str = "configuration") -> Config:
    """Validate a nested mapping into a Config, turning pydantic errors into a readable ConfigError."""
    try:
        return Config.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Read a params file (missing file: defaults), apply overrides and validate.

    >>> load_config(None, ["train.iterations=5"]).train.iterations
    5
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
        values, source = loaded, str(path)
    if overrides:
        values = apply_overrides(values, overrides)
        source += " with --set overrides"
    return build_config(values, source)


def default_config_path() -> Path | None:
    """params.yaml in the working directory, when there is one: the file DVC reads too."""
    candidate = Path("params.yaml")
    return candidate if candidate.is_file() else None
