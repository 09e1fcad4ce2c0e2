"""The `replearn` command: a thin adapter from the terminal to one library function per stage.

Global options come before the subcommand: `replearn --config params.yaml --set train.iterations=50 train ...`.
Errors meant for the user (bad config, bad data, steps out of order) print a message and exit 1;
usage errors exit 2, as typer does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from replearn import __version__
from replearn.config import Config, ConfigError, default_config_path, load_config, with_values
from replearn.console import setup_logging
from replearn.errors import UserError

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


def print_class_folder_summary(root: Path, counts: dict[str, int]) -> None:
    """Classes, images and bytes written, so the user sees at a glance what a command made."""
    total_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    table = Table(title=f"class folders in {root}")
    for column in ("classes", "images", "bytes", "smallest class", "largest class"):
        table.add_column(column, justify="right")
    table.add_row(
        str(len(counts)),
        f"{sum(counts.values()):,}",
        f"{total_bytes:,}",
        str(min(counts.values(), default=0)),
        str(max(counts.values(), default=0)),
    )
    stdout.print(table)


@data_app.command("chars")
def data_chars(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to create; one sub-folder per class.")],
    per_class: Annotated[int | None, typer.Option(help="Images per class [default: data.per_class].")] = None,
    size: Annotated[int | None, typer.Option(help="Image side in pixels [default: data.size].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [default: data.seed].")] = None,
    fonts: Annotated[
        list[Path] | None,
        typer.Option("--fonts", metavar="<path>", help="Extra .ttf/.otf files or folders (repeatable)."),
    ] = None,
    only_given_fonts: Annotated[
        bool, typer.Option("--only-given-fonts", help="Use only the --fonts, not the fonts found in site-packages.")
    ] = False,
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
    print_class_folder_summary(out, counts)


@data_app.command("digits")
def data_digits(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to create; one sub-folder per digit.")],
    size: Annotated[int | None, typer.Option(help="Image side in pixels [default: data.size].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write scikit-learn's 1,797 handwritten digit scans (10 classes), upscaled, as PNG class folders."""
    from replearn.data.digits import generate_digits

    cfg = with_values(state(ctx).config, {"data.size": size}).data
    counts = generate_digits(out, size=cfg.size, force=force)
    print_class_folder_summary(out, counts)


@app.command("validate")
def validate(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="Class folders: DATA_DIR/<class>/<image>. Never modified.")],
    out: Annotated[
        Path | None,
        typer.Argument(help="Report folder (manifest, summary, bad files, Data Docs) [default: validate.out_dir]."),
    ] = None,
    on_error: Annotated[
        Literal["fail", "quarantine"] | None,
        typer.Option(
            help="fail: exit 1 on any failed check; quarantine: list bad files and go on with the good ones "
            "[default: validate.on_error]."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Manifest processes, 0 = all cores [default: validate.workers].")
    ] = None,
) -> None:
    """Check the class folders (manifest + Great Expectations suite + Data Docs); exit 1 when the data is not valid."""
    from replearn.data.validation import report_table
    from replearn.stages.validate import stage

    config = with_values(state(ctx).config, {"validate.on_error": on_error, "validate.workers": workers})
    result = stage(config, data_dir, out or config.validate_.out_dir)
    stdout.print(report_table(result))
    stdout.print(f"Data Docs: {result.data_docs_path.resolve().as_uri()}", highlight=False)
    stdout.print(f"summary: {result.summary_path}  bad files: {result.bad_files_path}", highlight=False)
    if not result.valid:
        raise typer.Exit(1)


@app.command("preprocess")
def preprocess_command(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="Class folders: DATA_DIR/<class>/<image>. Never modified.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for images/, splits.csv and preprocess.json.")],
    workers: Annotated[
        int | None, typer.Option(help="Threads, 0 = one per core [default: preprocess.workers].")
    ] = None,
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
    result = stage(config, data_dir, out_dir, only)
    work = Table(title=f"preprocessed {data_dir} into {out_dir}")
    for column in ("images", "written", "already done", "stale removed", "left out", "undecodable", "duplicates"):
        work.add_column(column, justify="right")
    work.add_row(
        *(f"{n:,}" for n in (result.images, result.written, result.skipped, result.removed, result.left_out)),
        f"{len(result.failures):,}",
        f"{len(result.duplicates):,}",
    )
    stdout.print(work)
    splits = Table(title="splits")
    for column in ("subset", "classes", "train", "val", "test"):
        splits.add_column(column, justify="right")
    for subset, counts in result.counts.items():
        splits.add_row(subset, str(len(result.classes[subset])), *(f"{counts[s]:,}" for s in ("train", "val", "test")))
    stdout.print(splits)
    for source, error in result.failures[:10]:
        stdout.print(f"[yellow]skipped[/] {data_dir / source}: {error}", highlight=False)
    if len(result.failures) > 10:
        stdout.print(f"... and {len(result.failures) - 10} more, listed in {out_dir / 'preprocess.json'}")


@app.command("train")
def train_command(
    ctx: typer.Context,
    preprocessed_dir: Annotated[Path, typer.Argument(help="Output of `replearn preprocess` (images/ and splits.csv).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for last.pt, best.pt, metrics.csv, train_summary.json.")],
    iterations: Annotated[int | None, typer.Option(help="Iterations to train [default: train.iterations].")] = None,
    devices: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N [default: train.devices].")] = None,
    nproc_per_node: Annotated[
        str | None,
        typer.Option("--nproc-per-node", help="Processes on this machine: N or auto [default: train.nproc_per_node]."),
    ] = None,
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
    if os.environ.get("RANK", "0") != "0":
        return
    summary = result.summary
    table = Table(title=f"training run in {out_dir}")
    for column in ("iterations", "minutes", "images/s", "final loss", "best val P@1", "best at"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary["iterations"]),
        f"{summary['seconds'] / 60:.1f}",
        f"{summary['images_per_second']:,.1f}",
        f"{summary['final_loss']:.4f}",
        f"{summary['best_val_precision_at_1']:.4f}",
        str(summary["best_iteration"]),
    )
    stdout.print(table)


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A checkpoint from `replearn train` (.pt) or an ONNX model (.onnx).")],
    preprocessed_dir: Annotated[Path, typer.Argument(help="Output of `replearn preprocess` (images/ and splits.csv).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to create: metrics, per-class table, threshold, plots.")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists.")] = False,
) -> None:
    """kNN retrieval metrics on seen and unseen classes, and the similarity threshold calibrated for clustering."""
    from replearn.stages.evaluate import stage

    result = stage(state(ctx).config, model, preprocessed_dir, out_dir, force=force)
    table = Table(title=f"evaluation in {out_dir}")
    for column in ("classes", "P@1", "R@4", "MAP@R", "kNN acc", "LOO P@1", "NMI"):
        table.add_column(column, justify="right")
    for subset in ("seen", "unseen"):
        keys = ("precision_at_1", "recall_at_4", "map_at_r", "knn_accuracy", "loo/precision_at_1", "nmi")
        values = [result.metrics.get(f"{subset}/{key}") for key in keys]
        if any(value is not None for value in values):
            table.add_row(subset, *("-" if value is None else f"{value:.3f}" for value in values))
    stdout.print(table)
    if "precision_drop" in result.metrics:
        stdout.print(f"precision drop, seen - unseen P@1: {result.metrics['precision_drop']:.3f}")
    stdout.print(
        f"threshold {result.threshold:.4f} (pairwise F1 {result.metrics.get('threshold/f1', float('nan')):.3f}); "
        f"clusters: threshold {result.cluster_threshold:.4f}, resolution {result.resolution:g}; "
        f"in {result.out_dir / 'threshold.json'}"
    )


@app.command("compare")
def compare_command(
    ctx: typer.Context,
    image_a: Annotated[Path, typer.Argument(help="First image.")],
    image_b: Annotated[Path, typer.Argument(help="Second image.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="ONNX model or training checkpoint.")],
    threshold: Annotated[
        float | None, typer.Option(min=-1.0, max=1.0, help="Similarity that counts as the same class.")
    ] = None,
    threshold_file: Annotated[
        Path | None, typer.Option(help="threshold.json from `replearn evaluate` (or its folder).")
    ] = None,
) -> None:
    """Cosine similarity of two images, and whether it passes the threshold.

    The threshold is the first of: --threshold, --threshold-file, the ONNX model's metadata, cluster.threshold.
    """
    from replearn.evaluation.compare import compare_images

    result = compare_images(state(ctx).config, model, image_a, image_b, threshold, threshold_file)
    stdout.print(f"cosine similarity: {result.similarity:.4f}")
    if result.same_class is None:
        stdout.print("no threshold known: pass --threshold or --threshold-file, or use a model with one")
    else:
        verdict = "same class" if result.same_class else "different classes"
        relation = ">=" if result.same_class else "<"
        stdout.print(
            f"{verdict}: {result.similarity:.4f} {relation} threshold {result.threshold:.4f} "
            f"(from {result.threshold_source})"
        )


@app.command("embed")
def embed(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="ONNX model written by `replearn export`.")],
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively; hidden files skipped).")],
    out: Annotated[Path, typer.Argument(help="Folder to create: embeddings, path index, failures.csv, embed.json.")],
    batch_size: Annotated[int | None, typer.Option(help="Images per batch [default: embed.batch_size].")] = None,
    provider: Annotated[
        Literal["auto", "cuda", "cpu"] | None, typer.Option(help="onnxruntime provider [default: embed.provider].")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime threads, 0 = auto [default: embed.threads].")] = None,
    file_format: Annotated[
        Literal["npy", "parquet"] | None, typer.Option("--format", help="Output format [default: embed.format].")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Embed a folder of images with onnxruntime alone (no torch); unreadable images are skipped and listed."""
    import time

    from replearn.stages.embed import stage

    options = {"batch_size": batch_size, "provider": provider, "threads": threads, "format": file_format}
    config = with_values(state(ctx).config, {f"embed.{key}": value for key, value in options.items()})
    started = time.perf_counter()
    result = stage(config, model, images, out, force=force)
    seconds = time.perf_counter() - started
    table = Table(title=f"embeddings in {out}")
    for column in ("images", "dimension", "skipped", "images/s"):
        table.add_column(column, justify="right")
    rate = len(result.paths) / seconds if seconds > 0 else 0.0
    table.add_row(f"{len(result.paths):,}", str(result.embeddings.shape[1]), str(len(result.failures)), f"{rate:,.1f}")
    stdout.print(table)
    if result.failures:
        stdout.print(f"[yellow]{len(result.failures)} unreadable file(s) skipped[/]: listed in {out / 'failures.csv'}")


@app.command("export")
def export(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (best.pt or last.pt).")],
    out: Annotated[Path, typer.Argument(help="ONNX file to write, e.g. model.onnx.")],
    images: Annotated[
        Path | None,
        typer.Option(help="Images for the parity batch, e.g. the preprocessed folder (its splits.csv: data version)."),
    ] = None,
    threshold_file: Annotated[
        Path | None, typer.Option(help="threshold.json from `replearn evaluate`, stored in the metadata.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="A similarity threshold to store instead of --threshold-file.")
    ] = None,
    data_version: Annotated[
        str | None, typer.Option(help="Data version to record [default: the one in IMAGES/preprocess.json].")
    ] = None,
    quantize: Annotated[
        Literal["none", "int8"] | None, typer.Option(help="Also write OUT.int8.onnx [default: export.quantize].")
    ] = None,
    fp16: Annotated[bool | None, typer.Option("--fp16/--no-fp16", help="Also write OUT.fp16.onnx (for GPUs).")] = None,
    exporter: Annotated[
        Literal["dynamo", "torchscript"] | None, typer.Option(help="ONNX exporter [default: export.exporter].")
    ] = None,
) -> None:
    """Export a checkpoint to ONNX with its metadata; fails unless onnxruntime matches eager PyTorch."""
    from replearn.stages.export import stage

    options = {"export.quantize": quantize, "export.fp16": fp16, "export.exporter": exporter}
    config = with_values(state(ctx).config, options)
    result = stage(config, checkpoint, out, images, threshold_file, threshold, data_version=data_version)
    title = f"{result.exporter} export to {out.parent}, opset {result.opset}, parity on {result.parity.images} images"
    table = Table(title=title)
    for column in ("file", "MB", "max abs diff", "min cosine"):
        table.add_column(column, justify="right")
    for path, parity in [(result.path, result.parity), *result.variants.values()]:
        size = path.stat().st_size / 1e6
        table.add_row(path.name, f"{size:.1f}", f"{parity.max_abs_diff:.2e}", f"{parity.min_cosine:.6f}")
    stdout.print(table)
    threshold = result.metadata.threshold
    stdout.print(
        f"embedding dim {result.metadata.embedding_dim}, {len(result.metadata.classes)} classes, "
        f"threshold {'not set' if threshold is None else f'{threshold:.4f}'}, data {result.metadata.data_version}",
        highlight=False,
    )


@app.command("cluster")
def cluster(
    ctx: typer.Context,
    model: Annotated[
        Path, typer.Argument(help="ONNX model from `replearn export`; its metadata gives the threshold and resolution.")
    ],
    inbox: Annotated[Path, typer.Argument(help="Folder of images to cluster (recursive; hidden files skipped).")],
    out: Annotated[
        Path, typer.Argument(help="Folder of the cluster registry and one runs/run-NNNNNN per run; created if missing.")
    ],
    threshold: Annotated[
        float | None, typer.Option(help="Similarity that links two images [default: the model's calibrated one].")
    ] = None,
    min_size: Annotated[int | None, typer.Option(help="Smaller clusters go to 0 [default: cluster.min_size].")] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="INBOX holds class folders: score the clusters against them.")
    ] = False,
) -> None:
    """Cluster the new images of INBOX into OUT: ids stay stable across runs; a batch seen before changes nothing.

    New images are grouped with earlier unclustered images and with the clusters they are near.

    cluster.method: louvain (the default) or components (the seed's rule). Merges are recorded, never renumbered.
    """
    from replearn.stages.cluster import stage

    options = {
        "cluster.threshold": threshold,
        "cluster.min_size": min_size,
        "cluster.evaluate_labels": evaluate or None,
    }
    result = stage(with_values(state(ctx).config, options), model, inbox, out)
    if result.run is None:
        unreadable = f", {len(result.failures)} unreadable" if result.failures else ""
        stdout.print(f"nothing new in {inbox} ({result.images:,} files{unreadable}): {out} unchanged")
        return
    table = Table(title=f"clustering run {result.run} into {out}")
    for column in ("new images", "joined existing", "new clusters", "unclustered", "unreadable"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{result.new_images:,}",
        f"{result.assigned_to_existing:,}",
        f"{result.new_clusters:,}",
        f"{result.unclustered:,}",
        f"{len(result.failures):,}",
    )
    stdout.print(table)
    if result.metrics:
        scores = Table(title="agreement with the class folders")
        scores.add_column("metric")
        scores.add_column("value", justify="right")
        for name, value in result.metrics.items():
            scores.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
        stdout.print(scores)
    assert result.run_dir is not None
    stdout.print(f"report: {result.run_dir / 'report.html'}")


def run() -> None:
    """Console-script entry point: user errors become one readable line and exit code 1."""
    try:
        app()
    except (UserError, FileExistsError, FileNotFoundError, PermissionError) as error:
        kind = "configuration error" if isinstance(error, ConfigError) else "error"
        Console(stderr=True).print(f"[bold red]{kind}:[/] {error}", highlight=False)
        raise SystemExit(1) from None
