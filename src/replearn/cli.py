"""The `replearn` command: a thin adapter from the terminal to one library function per stage.

Global options come before the subcommand: `replearn --config params.yaml --set train.iterations=50 train ...`.
Errors meant for the user (bad config, bad data, steps out of order) print a message and exit 1;
usage errors exit 2, as typer does. `replearn cluster --detailed-exit-code` exits 3 when there was
nothing new (NOTHING_NEW_EXIT_CODE), for cron jobs that act only on new clusters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console

from replearn import __version__
from replearn.config import Config, ConfigError, config_field, default_config_path, load_config, with_values
from replearn.console import class_folders_table, setup_logging
from replearn.errors import UserError

if TYPE_CHECKING:
    from replearn.catalogue.corrections import Correction

log = logging.getLogger(__name__)
stdout = Console()

app = typer.Typer(
    name="replearn",
    help="Deep metric learning from class folders: validate, preprocess, train, evaluate, export, embed, cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # help texts say "[default: train.iterations]": text, not Rich markup
)
data_app = typer.Typer(
    help="Generate the bundled demo datasets as class folders.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")
clusters_app = typer.Typer(
    help="Inspect and correct the cluster catalogue in OUT of `replearn cluster` (or the clustering pipeline's). "
    "Each correction is one transaction, recorded as an event by a person, and confirms the clusters it touches.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(clusters_app, name="clusters")

# `replearn cluster --detailed-exit-code` when the inbox held nothing new. Not 1 (failures) nor 2 (usage errors).
NOTHING_NEW_EXIT_CODE = 3


def from_config(key: str, *names: str) -> Any:
    """The option that overrides config `key` for one command: its help is the key's description in config.py.

    One source for what a setting means, whether it is set in params.yaml, with --set, or as an option.
    """
    description = config_field(key).description
    if not description:
        raise ValueError(f"{key} needs a description in config.py to be a command option")
    return typer.Option(*names, help=f"{description.rstrip('.')} [default: {key}].")


# Arguments and options that several commands share.
DataDirArgument = Annotated[Path, typer.Argument(help="Class folders: DATA_DIR/<class>/<image>. Never modified.")]
PreprocessedDirArgument = Annotated[
    Path, typer.Argument(help="Output of `replearn preprocess` (images/ and splits.csv).")
]
# compare judges with a threshold, export stores one: the same two ways to give it.
ThresholdOption = Annotated[
    float | None, typer.Option(min=-1.0, max=1.0, help="Cosine similarity that counts as the same class.")
]
ThresholdFileOption = Annotated[
    Path | None, typer.Option(help="threshold.json from `replearn evaluate` (or its folder), instead of --threshold.")
]
# The fonts of the rendered demo data (data chars, data glyphs).
FontsOption = Annotated[
    list[Path] | None,
    typer.Option("--fonts", metavar="<path>", help="Extra .ttf/.otf files or folders (repeatable)."),
]
OnlyGivenFontsOption = Annotated[
    bool,
    typer.Option("--only-given-fonts", help="Use only the --fonts, not the fonts that replearn's dependencies ship."),
]


@dataclass
class CliState:
    """What the global options said; the config is loaded once, when a command first asks for it."""

    config_path: Path | None = None
    overrides: list[str] = field(default_factory=list)
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path or default_config_path(), self.overrides)
        return self._config


def _version(value: bool) -> None:
    if value:
        stdout.print(f"replearn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Params file [default: ./params.yaml when present, else defaults]."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="<key=value>",
            help="Override one value, e.g. --set train.iterations=100 (repeatable).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    setup_logging(verbose)
    ctx.obj = CliState(config_path=config, overrides=list(overrides or []))


def state(ctx: typer.Context) -> CliState:
    return ctx.ensure_object(CliState)


@data_app.command("chars")
def data_chars(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to create; one sub-folder per class.")],
    per_class: Annotated[int | None, from_config("data.per_class")] = None,
    size: Annotated[int | None, from_config("data.size")] = None,
    seed: Annotated[int | None, from_config("data.seed")] = None,
    fonts: FontsOption = None,
    only_given_fonts: OnlyGivenFontsOption = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Render the 62 alphanumeric classes (digit_0.., upper_A.., lower_a..) from installed fonts."""
    from replearn.data.chars import generate_chars

    cfg = with_values(state(ctx).config, {"data.per_class": per_class, "data.size": size, "data.seed": seed}).data
    counts = generate_chars(
        out,
        per_class=cfg.per_class,
        size=cfg.size,
        seed=cfg.seed,
        fonts=fonts,
        replace_fonts=only_given_fonts,
        force=force,
    )
    stdout.print(class_folders_table(out, counts))


@data_app.command("glyphs")
def data_glyphs(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to create; one sub-folder per code point (u0041, ...).")],
    size: Annotated[int | None, from_config("data.size")] = None,
    seed: Annotated[int | None, from_config("data.seed")] = None,
    max_classes: Annotated[
        int | None, typer.Option("--max-classes", min=2, help="At most this many classes, in code point order.")
    ] = None,
    fonts: FontsOption = None,
    only_given_fonts: OnlyGivenFontsOption = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Render every Latin, Greek, Cyrillic, symbol and math code point 3 font families draw: 3-7 images a class."""
    from replearn.data.glyphs import generate_glyphs

    cfg = with_values(state(ctx).config, {"data.size": size, "data.seed": seed}).data
    counts = generate_glyphs(
        out,
        size=cfg.size,
        seed=cfg.seed,
        max_classes=max_classes,
        fonts=fonts,
        replace_fonts=only_given_fonts,
        force=force,
    )
    stdout.print(class_folders_table(out, counts))


@data_app.command("digits")
def data_digits(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to create; one sub-folder per digit.")],
    size: Annotated[int | None, from_config("data.size")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write scikit-learn's 1,797 handwritten digit scans (10 classes), upscaled, as PNG class folders."""
    from replearn.data.digits import generate_digits

    cfg = with_values(state(ctx).config, {"data.size": size}).data
    counts = generate_digits(out, size=cfg.size, force=force)
    stdout.print(class_folders_table(out, counts))


@app.command("validate")
def validate(
    ctx: typer.Context,
    data_dir: DataDirArgument,
    out: Annotated[
        Path | None,
        typer.Argument(help="Report folder (manifest, summary, bad files, Data Docs) [default: validate.out_dir]."),
    ] = None,
    on_error: Annotated[Literal["fail", "quarantine"] | None, from_config("validate.on_error")] = None,
    workers: Annotated[int | None, from_config("validate.workers")] = None,
) -> None:
    """Check the class folders (manifest + Great Expectations suite + Data Docs); exit 1 when the data is not valid."""
    from replearn.stages.validate import stage

    config = with_values(state(ctx).config, {"validate.on_error": on_error, "validate.workers": workers})
    result = stage(config, data_dir, out or config.validate_.out_dir)
    stdout.print(result)
    if not result.valid:
        raise typer.Exit(1)


@app.command("preprocess")
def preprocess_command(
    ctx: typer.Context,
    data_dir: DataDirArgument,
    out_dir: Annotated[Path, typer.Argument(help="Folder for images/, splits.csv and preprocess.json.")],
    workers: Annotated[int | None, from_config("preprocess.workers")] = None,
    only: Annotated[
        Path | None,
        typer.Option(
            help="CSV with a `path` column (relative to DATA_DIR), e.g. validate's good_files.csv: "
            "files it does not list are left out [default: every file]."
        ),
    ] = None,
) -> None:
    """Resize every image to the model's input (incremental) and write the seen/unseen train/val/test splits."""
    from replearn.stages.preprocess import stage

    config = with_values(state(ctx).config, {"preprocess.workers": workers})
    stdout.print(stage(config, data_dir, out_dir, only))


@app.command("train")
def train_command(
    ctx: typer.Context,
    preprocessed_dir: PreprocessedDirArgument,
    out_dir: Annotated[Path, typer.Argument(help="Folder for last.pt, best.pt, metrics.csv, train_summary.json.")],
    iterations: Annotated[int | None, from_config("train.iterations")] = None,
    devices: Annotated[str | None, from_config("train.devices")] = None,
    nproc_per_node: Annotated[str | None, from_config("train.nproc_per_node", "--nproc-per-node")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in OUT_DIR from its last checkpoint.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over even if OUT_DIR holds a run.")] = False,
) -> None:
    """Train the embedding model (ResNet + transformer, Circle loss, PK batches) on the seen train split."""
    import os

    from replearn.stages.train import stage

    options = {"train.iterations": iterations, "train.devices": devices, "train.nproc_per_node": nproc_per_node}
    config = with_values(state(ctx).config, options)
    result = stage(config, preprocessed_dir, out_dir, resume=resume, force=force)
    if os.environ.get("RANK", "0") == "0":
        stdout.print(result)


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A checkpoint from `replearn train` (.pt) or an ONNX model (.onnx).")],
    preprocessed_dir: PreprocessedDirArgument,
    out_dir: Annotated[Path, typer.Argument(help="Folder to create: metrics, per-class table, threshold, plots.")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists.")] = False,
) -> None:
    """kNN retrieval metrics on seen and unseen classes, and the similarity threshold calibrated for clustering."""
    from replearn.stages.evaluate import stage

    stdout.print(stage(state(ctx).config, model, preprocessed_dir, out_dir, force=force))


@app.command("compare")
def compare_command(
    ctx: typer.Context,
    image_a: Annotated[Path, typer.Argument(help="First image.")],
    image_b: Annotated[Path, typer.Argument(help="Second image.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="ONNX model or training checkpoint.")],
    threshold: ThresholdOption = None,
    threshold_file: ThresholdFileOption = None,
) -> None:
    """Cosine similarity of two images, and whether it passes the threshold.

    The threshold is the first of: --threshold, --threshold-file, the ONNX model's metadata, cluster.threshold.
    """
    from replearn.evaluation.compare import compare_images

    stdout.print(compare_images(state(ctx).config, model, image_a, image_b, threshold, threshold_file))


@app.command("embed")
def embed(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="ONNX model written by `replearn export`.")],
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively; hidden files skipped).")],
    out: Annotated[Path, typer.Argument(help="Folder to create: embeddings, path index, failures.csv, embed.json.")],
    batch_size: Annotated[int | None, from_config("embed.batch_size")] = None,
    provider: Annotated[Literal["auto", "cuda", "cpu"] | None, from_config("embed.provider")] = None,
    threads: Annotated[int | None, from_config("embed.threads")] = None,
    file_format: Annotated[Literal["npy", "parquet"] | None, from_config("embed.format", "--format")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Embed a folder of images with onnxruntime alone (no torch); unreadable images are skipped and listed."""
    from replearn.stages.embed import stage

    options = {"batch_size": batch_size, "provider": provider, "threads": threads, "format": file_format}
    config = with_values(state(ctx).config, {f"embed.{key}": value for key, value in options.items()})
    stdout.print(stage(config, model, images, out, force=force))


@app.command("export")
def export(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (best.pt or last.pt).")],
    out: Annotated[Path, typer.Argument(help="ONNX file to write, e.g. model.onnx.")],
    images: Annotated[
        Path | None,
        typer.Option(help="Images for the parity batch, e.g. the preprocessed folder (its splits.csv: data version)."),
    ] = None,
    threshold_file: ThresholdFileOption = None,
    threshold: ThresholdOption = None,
    data_version: Annotated[
        str | None, typer.Option(help="Data version to record [default: the one in IMAGES/preprocess.json].")
    ] = None,
    quantize: Annotated[Literal["none", "int8"] | None, from_config("export.quantize")] = None,
    fp16: Annotated[bool | None, from_config("export.fp16", "--fp16/--no-fp16")] = None,
    exporter: Annotated[Literal["dynamo", "torchscript"] | None, from_config("export.exporter")] = None,
) -> None:
    """Export a checkpoint to ONNX with its metadata; fails unless onnxruntime matches eager PyTorch."""
    from replearn.artifacts.threshold import Calibration
    from replearn.stages.export import stage

    options = {"export.quantize": quantize, "export.fp16": fp16, "export.exporter": exporter}
    config = with_values(state(ctx).config, options)
    calibration = None if threshold is None else Calibration(threshold=threshold)
    stdout.print(stage(config, checkpoint, out, images, threshold_file, calibration, data_version=data_version))


@app.command("cluster")
def cluster(
    ctx: typer.Context,
    model: Annotated[
        Path, typer.Argument(help="ONNX model from `replearn export`; its metadata gives the threshold and resolution.")
    ],
    inbox: Annotated[Path, typer.Argument(help="Folder of images to cluster (recursive; hidden files skipped).")],
    out: Annotated[
        Path,
        typer.Argument(help="Folder of the cluster catalogue and of one runs/run-NNNNNN a run; created if missing."),
    ],
    threshold: Annotated[float | None, from_config("cluster.threshold")] = None,
    min_size: Annotated[int | None, from_config("cluster.min_size")] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="INBOX holds class folders: score the clusters against them.")
    ] = False,
    detailed_exit_code: Annotated[
        bool,
        typer.Option(
            "--detailed-exit-code",
            help=f"Exit {NOTHING_NEW_EXIT_CODE} when there was nothing new to cluster, instead of 0.",
        ),
    ] = False,
) -> None:
    """Cluster the new images of INBOX into OUT: ids stay stable across runs; a batch seen before changes nothing.

    New images are grouped with earlier unclustered images and with the clusters they are near.

    cluster.method: louvain (the default) or components (the seed's rule). Merges are recorded, never renumbered.

    A MODEL other than the one OUT's catalogue was built with migrates the catalogue first: its images are
    embedded again, every id, name and state is kept, and the agreement of the old clusters is printed.

    Every run records its outcome in OUT/run_status.json (`replearn clusters status OUT`). Exit codes:
    0 the run finished (new images clustered, or nothing new); 1 it failed; 2 a usage error.
    With --detailed-exit-code, nothing new exits 3 instead of 0.
    """
    from replearn.catalogue.store import CatalogueLockedError
    from replearn.clustering.run_status import record_failure, record_success
    from replearn.stages.cluster import stage

    options = {
        "cluster.threshold": threshold,
        "cluster.min_size": min_size,
        "cluster.evaluate_labels": evaluate or None,
    }
    try:
        result = stage(with_values(state(ctx).config, options), model, inbox, out)
    except CatalogueLockedError:
        raise  # another run is at work on OUT: this one skipped, it did not fail
    except Exception as error:
        record_failure(out, error)
        raise
    record_success(out, images=result.images, new_images=result.new_images, run=result.run)
    stdout.print(result)
    if detailed_exit_code and result.run is None:
        raise typer.Exit(NOTHING_NEW_EXIT_CODE)


@clusters_app.command("status")
def clusters_status(
    out: Annotated[Path, typer.Argument(help="OUT of `replearn cluster`, or outputs/zenml/clusters for ZenML runs.")],
) -> None:
    """The last good run, the last failure with its one-line reason, and how many runs in a row have failed."""
    from replearn.clustering.run_status import STATUS_FILE, read_run_status

    if not (out / STATUS_FILE).is_file():
        raise UserError(f"no run has recorded its status in {out} yet ({out / STATUS_FILE} is missing)")
    stdout.print(read_run_status(out), soft_wrap=True)  # one line each, whatever the width: for grep and alerts


@clusters_app.command("export")
def clusters_export(
    out: Annotated[Path, typer.Argument(help="OUT of `replearn cluster`: the folder that holds catalogue/.")],
    file: Annotated[Path, typer.Argument(help="CSV to write: path, cluster_id, similarity, run, changed_run.")],
) -> None:
    """Write the current cluster of every image in OUT's catalogue as one CSV, one row per image."""
    from replearn.catalogue.read import export_assignments

    rows = export_assignments(out, file)
    stdout.print(f"{rows:,} images written to {file}", highlight=False)


CatalogueOutArgument = Annotated[
    Path, typer.Argument(help="OUT of `replearn cluster`: the folder that holds catalogue/.", show_default=False)
]
ClusterIdArgument = Annotated[int, typer.Argument(help="A cluster id, as `replearn clusters list` shows it.", min=1)]
ImagesArgument = Annotated[
    list[str], typer.Argument(help="Images by their path as stored (e.g. cats/1.jpg) or their key (path@sha256).")
]


def print_correction(correction: Correction) -> None:
    """What a correction committed, one event a line; or that nothing needed changing."""
    from replearn.catalogue.lineage import describe_event

    if correction.run is None:
        stdout.print("nothing to change: the catalogue is as asked", highlight=False)
        return
    for event in correction.events:
        sentence = describe_event(event.kind, event.cluster_id, event.other_id, event.images, event.name)
        stdout.print(f"correction {correction.run}: {sentence}", highlight=False)


@clusters_app.command("list")
def clusters_list(out: CatalogueOutArgument) -> None:
    """Every cluster not merged into another: id, state (automatic or confirmed), name, size, cohesion, runs."""
    from replearn.catalogue.read import list_clusters

    clusters = list_clusters(out)
    stdout.print(clusters.fillna({"name": ""}).to_string(index=False), highlight=False, soft_wrap=True)


@clusters_app.command("show")
def clusters_show(out: CatalogueOutArgument, cluster_id: ClusterIdArgument) -> None:
    """A cluster's state, name, size and merges, then every member (path, similarity to the prototype), best first.

    Reading the members scans the images table's cluster_id column: about 8 MB for a million images.
    """
    from replearn.catalogue.read import show_cluster

    view = show_cluster(out, cluster_id)
    cluster = view.cluster
    facts = [f"cluster {cluster_id}", cluster["state"], f"{len(view.members)} images"]
    if cluster["name"]:
        facts.insert(1, repr(cluster["name"]))
    if cluster["merged_into"]:
        facts.append(f"merged into cluster {cluster['merged_into']}")
    if view.merged:
        facts.append(f"clusters merged into it: {' '.join(map(str, view.merged))}")
    stdout.print(", ".join(facts), highlight=False)
    if len(view.members):
        members = view.members[["path", "similarity", "cluster_id", "key"]]
        stdout.print(members.to_string(index=False, float_format="%.4f"), highlight=False, soft_wrap=True)


@clusters_app.command("name")
def clusters_name(
    out: CatalogueOutArgument,
    cluster_id: ClusterIdArgument,
    name: Annotated[str, typer.Argument(help="The cluster's name (quote it if it has spaces).")],
) -> None:
    """Name a cluster; this confirms it."""
    from replearn.catalogue.corrections import name_cluster

    print_correction(name_cluster(out, cluster_id, name))


@clusters_app.command("confirm")
def clusters_confirm(
    ctx: typer.Context,
    out: CatalogueOutArgument,
    cluster_ids: Annotated[list[int], typer.Argument(help="Cluster ids to confirm.", min=1)],
) -> None:
    """Confirm clusters as they are: runs then only add images that pass their threshold, never merge or split them."""
    from replearn.catalogue.corrections import confirm_clusters

    print_correction(confirm_clusters(out, cluster_ids, state(ctx).config.cluster))


@clusters_app.command("merge")
def clusters_merge(
    ctx: typer.Context,
    out: CatalogueOutArgument,
    cluster_ids: Annotated[list[int], typer.Argument(help="Two or more cluster ids; the first keeps its id.", min=1)],
) -> None:
    """The clusters are one: the first id keeps, the others are recorded as merged into it (their images follow)."""
    from replearn.catalogue.corrections import merge_clusters

    print_correction(merge_clusters(out, cluster_ids, state(ctx).config.cluster))


@clusters_app.command("split")
def clusters_split(
    ctx: typer.Context,
    out: CatalogueOutArgument,
    cluster_id: ClusterIdArgument,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="A text file of the images to split off into a new cluster, one a line (path or key) "
            "[default: re-cluster the members at a higher threshold].",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=-1.0, max=1.0, help="Threshold to re-cluster the members at [default: halfway from the last run's to 1]"
        ),
    ] = None,
) -> None:
    """Split a cluster: the largest part keeps the id, every other part of at least cluster.min_size gets a new one."""
    from replearn.catalogue.corrections import split_cluster
    from replearn.clustering.methods import find_groups

    config = state(ctx).config.cluster
    if images is None:
        correction = split_cluster(out, cluster_id, find_groups=find_groups, threshold=threshold, config=config)
    else:
        if threshold is not None:
            raise UserError("--threshold re-clusters the members; with --images the part is given: use one of them")
        correction = split_cluster(out, cluster_id, images=read_image_list(images), config=config)
    print_correction(correction)


def read_image_list(path: Path) -> list[str]:
    """The images named in a text file, one a line (blank lines skipped)."""
    if not path.is_file():
        raise UserError(f"{path} is not a file: --images takes a text file of images, one a line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path} names no image: write one path or key a line")
    return names


@clusters_app.command("move")
def clusters_move(
    ctx: typer.Context,
    out: CatalogueOutArgument,
    images: ImagesArgument,
    to: Annotated[int, typer.Option("--to", min=1, help="The cluster to move the images into.")],
) -> None:
    """Move images into a cluster, from the cluster they are in or from unclustered."""
    from replearn.catalogue.corrections import move_images

    print_correction(move_images(out, to, images, state(ctx).config.cluster))


@clusters_app.command("reject")
def clusters_reject(ctx: typer.Context, out: CatalogueOutArgument, images: ImagesArgument) -> None:
    """Take images out of their cluster to unclustered: no run puts them back into it."""
    from replearn.catalogue.corrections import reject_images

    print_correction(reject_images(out, images, state(ctx).config.cluster))


@clusters_app.command("history")
def clusters_history(out: CatalogueOutArgument, cluster_id: ClusterIdArgument) -> None:
    """Every event of a cluster's lineage (it and the clusters it was merged or split with), oldest first."""
    from replearn.catalogue.lineage import cluster_history

    history = cluster_history(out, cluster_id)
    stdout.print(history[["run", "time", "actor", "what"]].to_string(index=False), highlight=False, soft_wrap=True)


@clusters_app.command("undo")
def clusters_undo(ctx: typer.Context, out: CatalogueOutArgument) -> None:
    """Undo the last run or correction (one level; a second undo redoes it). Ids it issued are not issued again."""
    from replearn.catalogue.corrections import undo_last

    print_correction(undo_last(out, state(ctx).config.cluster))


@clusters_app.command("promote")
def clusters_promote(
    ctx: typer.Context,
    out: CatalogueOutArgument,
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="Training data: DATA_DIR/<class>/<image>. Files are added to it, never changed or removed.",
            show_default=False,
        ),
    ],
    cluster_ids: Annotated[
        list[int] | None,
        typer.Argument(help="Only these confirmed clusters [default: every confirmed cluster].", show_default=False),
    ] = None,
) -> None:
    """Copy the images of confirmed clusters into DATA_DIR/<name>/: a cluster's name is its class.

    An existing class gets the images added. Images whose content is in DATA_DIR already are not
    copied, and no image is promoted twice. Each class folder records where its images came from
    in .replearn-provenance.csv (hidden, so validation skips it). A confirmed cluster without a name
    is refused: name it with `replearn clusters name OUT ID NAME`. Then `dvc repro` trains on it.
    """
    from replearn.catalogue.promotion import promote_clusters

    config = state(ctx).config
    stdout.print(promote_clusters(out, data_dir, cluster_ids or None, config.cluster, config.preprocess.split))


@clusters_app.command("fiftyone")
def clusters_fiftyone(
    ctx: typer.Context,
    out: CatalogueOutArgument,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="FiftyOne dataset name [default: replearn-<name of OUT>].", show_default=False),
    ] = None,
    apply_tags: Annotated[
        bool,
        typer.Option(
            "--apply-tags",
            help="First apply the App's marks as corrections: a sample tagged 'reject' is rejected, "
            "one whose cluster label was changed to another cluster's id is moved there.",
        ),
    ] = False,
    map_method: Annotated[
        Literal["umap", "tsne", "pca"] | None,
        typer.Option("--map", help="2-D map method [default: umap when umap-learn is installed, else tsne]."),
    ] = None,
) -> None:
    """Build or update a FiftyOne dataset of OUT's catalogue, with a similarity index and a 2-D map.

    Each sample holds its image, cluster (id, state, name), similarity and embedding; a rerun adds
    new images and updates what changed. Needs the extra: pip install 'replearn[fiftyone]'.
    """
    from replearn.catalogue.fiftyone_export import export_to_fiftyone

    result = export_to_fiftyone(out, dataset, apply_tags, map_method, state(ctx).config.cluster)
    for correction in result.corrections:
        print_correction(correction)
    stdout.print(result.describe(), highlight=False, soft_wrap=True)


@app.command("search")
def search_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="The ONNX model the catalogue was built with.", show_default=False)],
    out: CatalogueOutArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files to look up.", show_default=False)],
    clusters: Annotated[int, typer.Option("--clusters", min=0, help="Nearest clusters to show per image.")] = 3,
    neighbours: Annotated[
        int,
        typer.Option(
            "--neighbours",
            min=0,
            help="Nearest catalogue images to show per image (from the images segments' indexes; 0: none).",
        ),
    ] = 5,
) -> None:
    """Which clusters of OUT's catalogue each image is nearest to, and whether it passes their threshold.

    For each image: the nearest clusters (id, name, state, similarity to the prototype, whether it
    reaches the threshold of the catalogue's last run), from the index the scheduled runs use, and
    the nearest catalogue images. The catalogue is only read.
    """
    from replearn.catalogue.search import search_images

    stdout.print(search_images(model, out, images, clusters, neighbours, state(ctx).config))


def run() -> None:
    """Console-script entry point: user errors become one readable line and exit code 1."""
    try:
        app()
    except (UserError, FileExistsError, FileNotFoundError, PermissionError) as error:
        kind = "configuration error" if isinstance(error, ConfigError) else "error"
        Console(stderr=True).print(f"[bold red]{kind}:[/] {error}", highlight=False)
        raise SystemExit(1) from None
