"""Promotion: confirmed clusters become class folders of the training data (`replearn clusters promote`).

This closes the loop from clustering back to training: a person names the clusters that are real
classes, promotion copies their images into DATA_DIR/<name>/, and the next `dvc repro` (or training
pipeline run) validates and trains on them like any other class folder.

- A cluster's name is its class folder; a class that exists gets the images added. A confirmed
  cluster without a name, or with a name that cannot be a folder, is refused before anything is
  written, with the command that fixes it.
- A cluster's images are its members now: its own and those of the clusters merged into it.
- Files are copied, never moved or overwritten: each goes in under a hidden temporary name and is
  linked to a free name (its own, else with its content hash), so nothing in DATA_DIR changes but
  what is added. Every copy is recorded in DATA_DIR/<class>/.replearn-provenance.csv (catalogue,
  cluster id, image key and source, model, transaction): a dot-file, which validation and
  preprocessing skip like every hidden file, and which `dvc add` versions with the class.
- An image whose content is in DATA_DIR already (by sha256, hashing only the files of a size some
  candidate has) is not copied again; one whose source file is gone, or changed since it was
  clustered, is skipped with a warning and counted, and not marked, so a later promote can copy it.
- What was copied or found present is marked in the catalogue's `promotions` table (keyed by the
  image's digest), with a `promoted` event per cluster by a person, in one transaction under
  OUT/.lock (store.commit_change): no image is promoted twice. An undo leaves the table as it is,
  because it never takes files back out of DATA_DIR.

Reading the members scans the images table's cluster_id column (members.py): O(catalogue), once
per person's command, never in a run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Group, RenderableType
from rich.text import Text

from replearn.artifacts.hashing import sha256_file
from replearn.atomic import atomic_path
from replearn.catalogue.corrections import PERSON, cluster_rows, correcting
from replearn.catalogue.members import chain_of, members_of, merge_forest, subtree_of
from replearn.catalogue.segments import column_array, merge_tables
from replearn.catalogue.store import (
    CONFIRMED,
    PROMOTIONS_SCHEMA,
    Catalogue,
    CatalogueChange,
    Event,
    commit_change,
    compact,
    events_table,
    now,
)
from replearn.config import ClusterConfig, SplitConfig
from replearn.console import results_table
from replearn.data.manifest import is_hidden_or_system
from replearn.data.splits import select_unseen_classes
from replearn.errors import UserError

log = logging.getLogger(__name__)

PROVENANCE_FILE = ".replearn-provenance.csv"  # hidden: the manifest, validation and preprocessing skip it
PROVENANCE_COLUMNS = ["file", "sha256", "key", "source", "cluster_id", "catalogue", "model_id", "run", "time"]
MAX_NAME_BYTES = 255  # the longest file name on common file systems


@dataclass
class PromotedCluster:
    """What promotion did with one cluster's images."""

    cluster_id: int
    name: str
    copied: int = 0
    in_data: int = 0  # content already in DATA_DIR: marked, not copied
    promoted_before: int = 0
    missing: int = 0  # source file gone or changed since it was clustered: skipped, not marked


@dataclass
class Promotion:
    """What `promote_clusters` did; `run` is None when nothing needed recording."""

    run: int | None
    data_dir: Path
    clusters: list[PromotedCluster] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)  # promoted classes that the split holds out of training

    def __rich__(self) -> RenderableType:
        if not self.clusters:
            return Text("no confirmed cluster to promote: name the clusters that are classes first")
        rows = (
            (str(c.cluster_id), c.name, f"{c.copied:,}", f"{c.in_data:,}", f"{c.promoted_before:,}", f"{c.missing:,}")
            for c in self.clusters
        )
        title = (
            f"promotion {self.run} into {self.data_dir}" if self.run else f"nothing new to promote to {self.data_dir}"
        )
        table = results_table(
            title, ("cluster", "class", "copied", "already in data", "promoted before", "file missing"), *rows
        )
        parts: list[RenderableType] = [table]
        if any(c.missing for c in self.clusters):
            parts.append(Text("files gone or changed since they were clustered were skipped (warnings above)"))
        if self.run:
            parts.append(
                Text(f"provenance: {self.data_dir}/<class>/{PROVENANCE_FILE}; next: dvc add {self.data_dir}, dvc repro")
            )
        if self.unseen:
            parts.append(
                Text(
                    f"{', '.join(self.unseen)}: the split holds these classes out of training as unseen "
                    "(preprocess.split.unseen_fraction), so they test the next model instead of training it; "
                    "to train on them, list the unseen classes yourself in preprocess.split.unseen_classes"
                )
            )
        return Group(*parts)


def folder_name_problem(name: str) -> str | None:
    """Why a cluster's name cannot be a class folder, or None when it can.

    >>> folder_name_problem("receipts") is None
    True
    >>> folder_name_problem("a/b")
    'it holds a path separator'
    >>> folder_name_problem(".cache")
    'validation skips hidden and system folders'
    """
    if name in ("", ".", ".."):
        return "it is not a folder name"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "it holds a control character"
    if is_hidden_or_system(name):
        return "validation skips hidden and system folders"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def clusters_to_promote(catalogue: Catalogue, cluster_ids: list[int] | None) -> dict[int, str]:
    """id -> class of the clusters to promote: those given, or every confirmed one not merged into another.

    Refuses, before anything is written, an automatic cluster given by id, a confirmed one without a
    name, and a name that cannot be a folder.
    """
    out_dir = catalogue.directory.parent
    if cluster_ids:
        rows = cluster_rows(catalogue, cluster_ids)
        automatic = [c for c, row in rows.items() if row["state"] != CONFIRMED]
        if automatic:
            raise UserError(
                f"cluster {automatic[0]} is automatic: only clusters a person confirmed are promoted; "
                f"look at it (`replearn clusters show {out_dir} {automatic[0]}`) and name it "
                f"(`replearn clusters name {out_dir} {automatic[0]} NAME`)"
            )
        chosen = {c: row["name"] for c, row in rows.items()}
    else:
        table, columns = catalogue.clusters, ["id", "state", "name", "merged_into"]  # the member sums stay unread
        parts = [table.segment(i).select(columns) for i in range(len(table.segments))]
        clusters = merge_tables(parts, "id").to_pylist() if parts else []
        chosen = {row["id"]: row["name"] for row in clusters if row["state"] == CONFIRMED and row["merged_into"] == 0}
    unnamed = sorted(c for c, name in chosen.items() if not name)
    if unnamed:
        listed = " ".join(map(str, unnamed[:10])) + (" ..." if len(unnamed) > 10 else "")
        raise UserError(
            f"confirmed cluster(s) {listed} have no name, and a cluster's name is its class folder: name each with "
            f"`replearn clusters name {out_dir} ID NAME`, or promote only named ones: "
            f"`replearn clusters promote {out_dir} DATA_DIR ID...`"
        )
    for cluster_id, name in chosen.items():
        problem = folder_name_problem(name)
        if problem:
            raise UserError(
                f"cluster {cluster_id}'s name {name!r} cannot be a class folder ({problem}); "
                f"rename it with `replearn clusters name {out_dir} {cluster_id} NEW_NAME`"
            )
    return dict(sorted(chosen.items()))


def hashes_in_data(data_dir: Path, sizes: set[int]) -> set[str]:
    """The sha256 of every non-hidden file in DATA_DIR whose size is one of `sizes` (equal content, equal size)."""
    found: set[str] = set()
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = [d for d in dirs if not is_hidden_or_system(d)]
        for name in files:
            path = Path(root) / name
            if not is_hidden_or_system(name) and path.is_file() and path.stat().st_size in sizes:
                found.add(sha256_file(path))
    return found


def read_source(source: Path, sha256: str) -> bytes | None:
    """The image's bytes, or None (with a warning) when its file is gone or no longer the image clustered."""
    try:
        data = source.read_bytes()
    except OSError as error:
        log.warning("skipped %s: %s", source, error.strerror or error)
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        log.warning("skipped %s: its content changed since it was clustered", source)
        return None
    return data


def copy_in(data: bytes, class_dir: Path, name: str, sha256: str) -> Path:
    """Write `data` into class_dir under a free name (`name`, else with its hash) without ever replacing a file.

    The bytes go to a hidden temporary file first and are linked to their name, so a crash leaves
    no half-written image (a leftover temporary is hidden, and validation skips it).
    """
    class_dir.mkdir(parents=True, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    candidates = [name, f"{stem}-{sha256[:12]}{suffix}"] + [f"{stem}-{sha256[:12]}-{i}{suffix}" for i in range(2, 100)]
    handle, temporary = tempfile.mkstemp(dir=class_dir, prefix=".replearn-copy-")
    try:
        with os.fdopen(handle, "wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
        for candidate in candidates:
            try:
                os.link(temporary, class_dir / candidate)
            except FileExistsError:
                continue
            return class_dir / candidate
        raise UserError(f"no free name for {name} in {class_dir}: {len(candidates)} names taken")
    finally:
        os.unlink(temporary)


def append_provenance(class_dir: Path, rows: list[list[str]]) -> None:
    """Add rows to the class's provenance file (written whole, atomically; earlier rows are kept)."""
    path = class_dir / PROVENANCE_FILE
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not before:
        writer.writerow(PROVENANCE_COLUMNS)
    writer.writerows(rows)
    with atomic_path(path) as temporary:
        temporary.write_text(before + buffer.getvalue(), encoding="utf-8")


def promote_clusters(
    out_dir: Path,
    data_dir: Path,
    cluster_ids: list[int] | None = None,
    config: ClusterConfig | None = None,
    split: SplitConfig | None = None,
) -> Promotion:
    """Copy the images of confirmed clusters into DATA_DIR/<name>/ and mark them promoted, as one transaction.

    `cluster_ids`: only these (each must be confirmed); default every confirmed cluster not merged into another.
    The result names the promoted classes that `split` (the split of the next preprocess) holds out of training.
    """
    config = config or ClusterConfig()
    if not data_dir.is_dir():
        raise UserError(f"DATA_DIR {data_dir} is not a folder; promotion adds class folders to existing training data")
    with correcting(out_dir) as catalogue:
        chosen = clusters_to_promote(catalogue, cluster_ids)
        if not chosen:
            return Promotion(run=None, data_dir=data_dir)
        report = {c: PromotedCluster(c, name) for c, name in chosen.items()}
        run, time = catalogue.run + 1, now()
        marked = copy_members(catalogue, data_dir, report, run, time)
        result = Promotion(run=None, data_dir=data_dir, clusters=list(report.values()))
        if not marked:
            return result
        events = [
            Event(run, time, "promoted", c.cluster_id, images=c.copied, actor=PERSON, name=c.name)
            for c in report.values()
            if c.copied or c.in_data
        ]
        change = CatalogueChange(
            images=None,
            clusters=None,
            events=events_table(events),
            runs=None,
            pool=catalogue.pool,
            next_cluster_id=catalogue.next_cluster_id,
            promotions=pa.Table.from_pylist(marked, PROMOTIONS_SCHEMA),
        )
        catalogue.run = run
        commit_change(catalogue, change, config.seed)
        compact(catalogue, config.seed)
        result.run = run
        result.unseen = held_out_of_training(data_dir, [c.name for c in report.values()], split or SplitConfig())
        return result


def held_out_of_training(data_dir: Path, classes: list[str], split: SplitConfig) -> list[str]:
    """Those of `classes` that the split of DATA_DIR's class folders makes unseen: training never sees them."""
    folders = [entry.name for entry in data_dir.iterdir() if entry.is_dir() and not is_hidden_or_system(entry.name)]
    unseen = select_unseen_classes(folders, split)
    return sorted(name for name in set(classes) if name in unseen)


def copy_members(
    catalogue: Catalogue, data_dir: Path, report: dict[int, PromotedCluster], run: int, time: str
) -> list[dict[str, object]]:
    """Copy the members of the clusters in `report` not promoted before, counting in it what became of each.

    Returns the promotions rows of the images copied or found in DATA_DIR; each class's provenance
    file gets a row per file copied into it.
    """
    forest = merge_forest(catalogue)
    members = members_of(catalogue, subtree_of(report, forest))
    owners = [chain_of(int(c), forest)[-1] for c in column_array(members, "cluster_id")]
    promotions = catalogue.tables["promotions"]
    digests = column_array(members, "digest")
    before = promotions.find(digests)[0] >= 0 if promotions.segments else np.zeros(len(digests), dtype=bool)
    records = members.select(["digest", "key", "path", "source", "sha256"]).to_pylist()
    sizes = {
        os.path.getsize(r["source"])
        for r, done in zip(records, before, strict=True)
        if not done and os.path.isfile(r["source"])
    }
    present = hashes_in_data(data_dir, sizes)
    origin = [str(catalogue.directory.resolve()), catalogue.model_id or "", str(run), time]
    marked: list[dict[str, object]] = []
    provenance: dict[str, list[list[str]]] = {}
    for i in sorted(range(len(records)), key=lambda i: (owners[i], records[i]["path"])):
        record, owner, promoted = records[i], owners[i], report[owners[i]]
        if before[i]:
            promoted.promoted_before += 1
            continue
        mark = {"digest": record["digest"], "cluster_id": owner, "class": promoted.name, "file": None, "run": run}
        if record["sha256"] in present:
            promoted.in_data += 1
            marked.append(mark)
            continue
        data = read_source(Path(record["source"]), record["sha256"])
        if data is None:
            promoted.missing += 1
            continue
        target = copy_in(data, data_dir / promoted.name, Path(record["path"]).name, record["sha256"])
        present.add(record["sha256"])
        promoted.copied += 1
        marked.append(mark | {"file": target.relative_to(data_dir).as_posix()})
        row = [target.name, record["sha256"], record["key"], record["source"], str(owner), *origin]
        provenance.setdefault(promoted.name, []).append(row)
    for name, rows in provenance.items():  # one file per class: clusters of one name share it
        append_provenance(data_dir / name, rows)
    return marked
