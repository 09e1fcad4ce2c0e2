"""A person's corrections of the catalogue: name, confirm, merge, split, move, reject, and undo.

Each correction is one transaction under OUT/.lock (a run in progress refuses it, and it refuses a
run), takes the next number of the catalogue's `run` counter, and commits through
store.commit_change, so it is the undo point until the next transaction. Each writes events with
actor `person`, and every cluster it touches becomes `confirmed`: runs only add images to a
confirmed cluster, never merge, split or dissolve it, and never put back an image a person rejected
from it (the `rejections` table, read by runs through Catalogue.rejected_from).

Images keep their stored cluster_id through a merge, as after a run's merge; readers follow
merged_into. When members change (merge, split, move, reject), the size, member sum, cohesion and
exemplars of every cluster along the changed images' merge chains are recomputed from the members,
so the nearest-prototype index written with the new clusters segment points new images at the
clusters as the person left them. A kept cluster's row then covers the clusters merged into it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from replearn.catalogue.members import chain_of, members_of, merge_forest, resolve_images, subtree_of
from replearn.catalogue.segments import column_array, vector_column, vectors_of
from replearn.catalogue.store import (
    CONFIRMED,
    REJECTIONS_SCHEMA,
    RESTORED_BY_UNDO,
    Catalogue,
    CatalogueChange,
    Event,
    Segment,
    catalogue_lock,
    clusters_schema,
    commit_change,
    compact,
    events_table,
    load_catalogue,
    now,
)
from replearn.config import ClusterConfig
from replearn.errors import UserError
from replearn.similarity import unit_rows

PERSON = "person"
# replearn.clustering.methods.find_groups: (embeddings, threshold, config) -> group labels. Passed in,
# because the catalogue sits below the clustering layer.
GroupFinder = Callable[[np.ndarray, float, ClusterConfig], np.ndarray]


@dataclass
class Correction:
    """What a correction committed: its transaction number (None: nothing needed changing) and events."""

    run: int | None
    events: list[Event] = field(default_factory=list)


@dataclass
class Plan:
    """What a correction changes, before it is written: the commands decide it, commit_plan writes it."""

    events: list[Event]
    touched: set[int]  # clusters the person acted on: confirmed, and rewritten
    reassigned: dict[int, int] = field(default_factory=dict)  # image digest -> its new stored cluster id (0: none)
    names: dict[int, str] = field(default_factory=dict)
    merged_into: dict[int, int] = field(default_factory=dict)
    rejected: dict[int, set[int]] = field(default_factory=dict)  # image digest -> clusters it is rejected from
    new_ids: int = 0  # ids issued from catalogue.next_cluster_id


@contextmanager
def correcting(out_dir: Path) -> Iterator[Catalogue]:
    """OUT's catalogue under its lock, for one correction; an OUT without images is an error."""
    with catalogue_lock(out_dir):
        catalogue = load_catalogue(out_dir)
        if not catalogue.images.segments:
            raise UserError(f"{out_dir} holds no clustered images yet (run `replearn cluster MODEL INBOX {out_dir}`)")
        yield catalogue


def event(kind: str, cluster_id: int, other_id: int = 0, images: int = 0, name: str | None = None) -> Event:
    """A person's event; commit_plan stamps its run and time."""
    return Event(0, "", kind, int(cluster_id), other_id=int(other_id), images=int(images), name=name)


def cluster_rows(catalogue: Catalogue, cluster_ids: Sequence[int], active: bool = True) -> dict[int, dict[str, Any]]:
    """The current rows of clusters a person named, by id; an id never issued, or merged when `active`, is an error."""
    ids = np.array(cluster_ids, dtype=np.int64)
    where, rows = catalogue.clusters.find(ids)
    for cluster_id, found in zip(ids.tolist(), where >= 0, strict=True):
        if not found:
            raise UserError(
                f"there is no cluster {cluster_id} in {catalogue.directory.parent} "
                f"(ids run from 1 to {catalogue.next_cluster_id - 1}; `replearn clusters list` shows them)"
            )
    records = catalogue.clusters.take(where, rows).to_pylist()
    by_id = {int(record["id"]): record for record in records}
    if active:
        for cluster_id, record in by_id.items():
            if record["merged_into"]:
                final = chain_of(cluster_id, merge_forest(catalogue))[-1]
                raise UserError(f"cluster {cluster_id} was merged into cluster {final}; act on that one")
    return by_id


def name_cluster(out_dir: Path, cluster_id: int, name: str, config: ClusterConfig | None = None) -> Correction:
    """Give a cluster a name; it is then confirmed."""
    name = name.strip()
    if not name:
        raise UserError("a cluster's name cannot be empty")
    with correcting(out_dir) as catalogue:
        cluster_rows(catalogue, [cluster_id])
        plan = Plan(events=[event("named", cluster_id, name=name)], touched={cluster_id}, names={cluster_id: name})
        return commit_plan(catalogue, plan, config or ClusterConfig())


def confirm_clusters(out_dir: Path, cluster_ids: Sequence[int], config: ClusterConfig | None = None) -> Correction:
    """Confirm clusters as they are: runs may add images to them but never merge, split or dissolve them."""
    with correcting(out_dir) as catalogue:
        rows = cluster_rows(catalogue, cluster_ids)
        automatic = {cluster_id for cluster_id, row in rows.items() if row["state"] != CONFIRMED}
        if not automatic:
            return Correction(run=None)
        return commit_plan(catalogue, Plan(events=[], touched=automatic), config or ClusterConfig())


def merge_clusters(out_dir: Path, cluster_ids: Sequence[int], config: ClusterConfig | None = None) -> Correction:
    """The clusters are one: the first keeps its id, the others are recorded as merged into it."""
    if len(cluster_ids) < 2 or len(set(cluster_ids)) < len(cluster_ids):
        raise UserError(f"merge takes two or more different cluster ids, not {' '.join(map(str, cluster_ids))}")
    with correcting(out_dir) as catalogue:
        rows = cluster_rows(catalogue, cluster_ids)
        keeper, merged = cluster_ids[0], cluster_ids[1:]
        plan = Plan(
            events=[event("merged_into", m, keeper, rows[m]["size"]) for m in merged],
            touched=set(cluster_ids),
            merged_into={m: keeper for m in merged},
        )
        return commit_plan(catalogue, plan, config or ClusterConfig())


def split_cluster(
    out_dir: Path,
    cluster_id: int,
    images: Sequence[str] | None = None,
    find_groups: GroupFinder | None = None,
    threshold: float | None = None,
    config: ClusterConfig | None = None,
) -> Correction:
    """Split a cluster: the given `images` off into a new cluster, or the parts `find_groups` finds in its members.

    Without `images`, the members are grouped at `threshold` (default: halfway from the last run's
    threshold to 1, a finer cut than the one that made the cluster); every part of at least
    cluster.min_size images but the largest gets a new id, numbered by size, and the largest keeps
    the id together with the smaller parts. Each new cluster records `split_from`.
    """
    config = config or ClusterConfig()
    if (images is None) == (find_groups is None):
        raise ValueError("split_cluster takes either images or find_groups")
    with correcting(out_dir) as catalogue:
        cluster_rows(catalogue, [cluster_id])
        members = members_of(catalogue, subtree_of([cluster_id], merge_forest(catalogue)))
        digests = column_array(members, "digest")
        if images is not None:
            part = resolve_images(catalogue, images)
            outside = np.setdiff1d(part, digests)
            if len(outside):
                key = catalogue.image_rows(outside[:1]).column("key")[0].as_py()
                raise UserError(f"{len(outside)} of the images are not in cluster {cluster_id}, e.g. {key}")
            if len(part) == len(digests):
                raise UserError(f"those are all {len(digests)} images of cluster {cluster_id}: nothing stays")
            labels = np.isin(digests, part).astype(np.int64) * 2  # part 2: the new cluster; part 0 stays
        else:
            assert find_groups is not None
            cut = split_threshold(catalogue) if threshold is None else threshold
            groups = find_groups(vectors_of(members, "embedding", catalogue.embedding_dim or 0), cut, config)
            labels = parts_by_size(groups, config.min_size)
            if labels.max(initial=0) < 2:
                raise UserError(
                    f"cluster {cluster_id} does not split at threshold {cut:.3f}: its {len(digests)} images form one "
                    f"part of at least {config.min_size}; give a higher --threshold or the part with --images FILE"
                )
        first = catalogue.next_cluster_id
        new_ids = np.where(labels >= 2, labels - 2 + first, 0)
        sizes = Counter(new_ids[new_ids > 0].tolist())
        plan = Plan(
            events=[event("split_from", new, cluster_id, n) for new, n in sorted(sizes.items())],
            touched={cluster_id},
            reassigned={int(d): int(c) for d, c in zip(digests, new_ids, strict=True) if c > 0},
            new_ids=len(sizes),
        )
        return commit_plan(catalogue, plan, config)


def parts_by_size(groups: np.ndarray, min_size: int) -> np.ndarray:
    """Number the groups of at least min_size 1, 2, ... from the largest (ties: first member first); the rest 0.

    >>> parts_by_size(np.array([7, 7, 7, 5, 5, 9]), min_size=2).tolist()
    [1, 1, 1, 2, 2, 0]
    """
    _, first, inverse, sizes = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    rank = np.empty(len(sizes), dtype=np.int64)
    rank[np.lexsort((first, -sizes))] = np.arange(1, len(sizes) + 1)
    return np.where(sizes[inverse] >= min_size, rank[inverse], 0)


def split_threshold(catalogue: Catalogue) -> float:
    """Halfway from the threshold of the catalogue's last run to 1: finer than the cut that formed its clusters."""
    return (1.0 + catalogue.last_threshold()) / 2


def move_images(out_dir: Path, to: int, images: Sequence[str], config: ClusterConfig | None = None) -> Correction:
    """Put images into cluster `to` (from whatever cluster they are in, or from unclustered)."""
    with correcting(out_dir) as catalogue:
        cluster_rows(catalogue, [to])
        digests = resolve_images(catalogue, images)
        forest = merge_forest(catalogue)
        current = current_clusters(catalogue, digests, forest)
        moving = current != to
        if not moving.any():
            raise UserError(f"the {len(digests)} image(s) are in cluster {to} already")
        sources = Counter(current[moving].tolist())
        plan = Plan(
            events=[event("moved", to, source, n) for source, n in sorted(sources.items())],
            touched={to},
            reassigned={int(d): to for d in digests[moving]},
        )
        return commit_plan(catalogue, plan, config or ClusterConfig())


def reject_images(out_dir: Path, images: Sequence[str], config: ClusterConfig | None = None) -> Correction:
    """Take images out of their cluster to unclustered; no run puts them back into it, nor where it was merged."""
    with correcting(out_dir) as catalogue:
        digests = resolve_images(catalogue, images)
        stored = column_array(catalogue.image_rows(digests), "cluster_id")
        if (stored == 0).any():
            key = catalogue.image_rows(digests[stored == 0][:1]).column("key")[0].as_py()
            raise UserError(f"{key} is unclustered: there is no cluster to reject it from")
        forest = merge_forest(catalogue)
        chains = [chain_of(int(c), forest) for c in stored]
        sources = Counter(chain[-1] for chain in chains)
        plan = Plan(
            events=[event("rejected", source, images=n) for source, n in sorted(sources.items())],
            touched=set(sources),
            reassigned={int(d): 0 for d in digests},
            rejected={int(d): set(chain) for d, chain in zip(digests, chains, strict=True)},
        )
        return commit_plan(catalogue, plan, config or ClusterConfig())


def current_clusters(catalogue: Catalogue, digests: np.ndarray, forest: dict[int, int]) -> np.ndarray:
    """The cluster each image is in now, merges followed (0: unclustered)."""
    stored = column_array(catalogue.image_rows(digests), "cluster_id")
    return np.array([chain_of(int(c), forest)[-1] if c else 0 for c in stored], dtype=np.int64)


@dataclass
class MemberStats:
    """Size, member sum and exemplars of each recomputed cluster."""

    sizes: dict[int, int]
    sums: dict[int, np.ndarray]
    exemplars: dict[int, list[int]]


def member_stats(
    catalogue: Catalogue, clusters: set[int], forest: dict[int, int], changed: pa.Table, exemplars: int
) -> MemberStats:
    """The statistics of `clusters` over their members after the change (`changed`: the rewritten image rows).

    A cluster's members are the images stored under it or under a cluster merged into it; its
    exemplars are its latest members (by the run that last changed them, then first seen).
    """
    dim = catalogue.embedding_dim or 0
    stats = MemberStats({}, {}, {})
    if not clusters:
        return stats
    scanned = members_of(catalogue, subtree_of(clusters, forest))
    rewritten = column_array(changed, "digest")
    kept = scanned.filter(pa.array(~np.isin(column_array(scanned, "digest"), rewritten)))
    rows = pa.concat_tables([kept, changed.cast(kept.schema)])
    stored, digests = column_array(rows, "cluster_id"), column_array(rows, "digest")
    order = np.lexsort((digests, column_array(rows, "run"), column_array(rows, "changed_run")))
    embeddings = vectors_of(rows, "embedding", dim).astype(np.float64)
    for cluster_id in clusters:
        inside = np.isin(stored, list(subtree_of([cluster_id], forest)))
        stats.sizes[cluster_id] = int(inside.sum())
        stats.sums[cluster_id] = embeddings[inside].sum(axis=0) if inside.any() else np.zeros(dim)
        stats.exemplars[cluster_id] = digests[order][inside[order]][-exemplars:].tolist()
    return stats


def commit_plan(catalogue: Catalogue, plan: Plan, config: ClusterConfig) -> Correction:
    """Write a correction: its image, cluster and rejection rows, its events and the pool, as one transaction."""
    run, dim = catalogue.run + 1, catalogue.embedding_dim or 0
    forest = merge_forest(catalogue) | plan.merged_into
    digests = np.array(sorted(plan.reassigned), dtype=np.uint64)
    images = catalogue.image_rows(digests)
    new_ids = np.array([plan.reassigned[int(d)] for d in digests], dtype=np.int64)
    # Whose members change: every cluster on the merge chain of an image's old or new cluster, and of a merge.
    changing = [*column_array(images, "cluster_id").tolist(), *new_ids.tolist(), *plan.merged_into]
    recomputed = {c for cluster_id in changing if cluster_id for c in chain_of(int(cluster_id), forest)}
    images = with_columns(images, cluster_id=pa.array(new_ids), changed_run=pa.array(np.full(len(digests), run)))
    stats = member_stats(catalogue, recomputed, forest, images, config.exemplars)
    clusters, events = updated_clusters(catalogue, plan, plan.touched | recomputed, stats, run)

    prototypes = {c: unit_rows(stats.sums[c][None, :])[0] for c in recomputed}
    embeddings = vectors_of(images, "embedding", dim)
    similarity = [float(e @ prototypes[c]) if c else np.nan for c, e in zip(new_ids, embeddings, strict=True)]
    images = with_columns(images, similarity=pa.array(similarity, pa.float64()))

    pool = catalogue.pool[~np.isin(catalogue.pool, digests[new_ids > 0])]  # moved images leave the pool
    unclustered = digests[(new_ids == 0) & ~np.isin(digests, pool)]  # rejected ones join it, newest last
    pool = np.concatenate([pool, unclustered]).astype(np.uint64)[-config.pool_max :]
    time = now()
    events = [replace(e, run=run, time=time, actor=PERSON) for e in events]
    change = CatalogueChange(
        images=images if len(digests) else None,
        clusters=clusters,
        events=events_table(events),
        runs=None,
        pool=pool,
        next_cluster_id=catalogue.next_cluster_id + plan.new_ids,
        rejections=rejection_rows(catalogue, plan.rejected, run),
    )
    catalogue.run = run
    commit_change(catalogue, change, config.seed)
    compact(catalogue, config.seed)
    return Correction(run=run, events=events)


def with_columns(table: pa.Table, **columns: pa.Array) -> pa.Table:
    """The table with some columns' values replaced (same names and types)."""
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), values.cast(table.schema.field(index).type))
    return table


def updated_clusters(
    catalogue: Catalogue, plan: Plan, touched: set[int], stats: MemberStats, run: int
) -> tuple[pa.Table, list[Event]]:
    """The touched clusters' new rows (confirmed; named, merged, recomputed as planned; new ids created)
    and the plan's events, with a `confirmed` event for each cluster that was automatic."""
    first_new = catalogue.next_cluster_id
    existing = cluster_rows(catalogue, sorted(c for c in touched if c < first_new), active=False)
    rows: list[dict[str, Any]] = []
    events = list(plan.events)
    for cluster_id in sorted(touched):
        row = existing.get(cluster_id) or {"id": cluster_id, "name": None, "created_run": run, "merged_into": 0}
        if cluster_id in existing and row["state"] != CONFIRMED:
            events.append(event("confirmed", cluster_id))
        row |= {"state": CONFIRMED, "changed_run": run}
        row["name"] = plan.names.get(cluster_id, row["name"])
        row["merged_into"] = plan.merged_into.get(cluster_id, row["merged_into"])
        if cluster_id in stats.sizes:
            size, total = stats.sizes[cluster_id], stats.sums[cluster_id]
            row |= {"size": size, "sum": total, "exemplars": stats.exemplars[cluster_id]}
            row["cohesion"] = float(np.linalg.norm(total) / max(size, 1))
        rows.append(row)
    return clusters_table(rows, catalogue.embedding_dim or 0), events


def clusters_table(rows: list[dict[str, Any]], dim: int) -> pa.Table:
    """Cluster rows as a clusters segment (the member sums as a fixed-size list column)."""
    schema = clusters_schema(dim)
    columns: dict[str, Any] = {name: [row[name] for row in rows] for name in schema.names}
    sums = np.array([np.asarray(row["sum"], dtype=np.float64) for row in rows]).reshape(len(rows), dim)
    columns["sum"] = vector_column(sums, pa.float64())
    return pa.table(columns, schema=schema)


def rejection_rows(catalogue: Catalogue, rejected: dict[int, set[int]], run: int) -> pa.Table | None:
    """The rejections rows of the images a person rejected: every cluster each was ever rejected from."""
    if not rejected:
        return None
    digests = np.array(sorted(rejected), dtype=np.uint64)
    before = catalogue.rejected_from(digests)
    clusters = [sorted(earlier | rejected[int(d)]) for d, earlier in zip(digests, before, strict=True)]
    return pa.table(
        {"digest": pa.array(digests, pa.uint64()), "clusters": clusters, "run": np.full(len(digests), run)},
        schema=REJECTIONS_SCHEMA,
    )


def undo_last(out_dir: Path, config: ClusterConfig | None = None) -> Correction:
    """Undo the last transaction (a run, a correction or an undo) as a new one: one level.

    The images, clusters and rejections tables, the pool and the model go back to the undo point;
    the events and runs tables keep what happened, and an `undone` event per cluster the undone
    transaction touched (other_id: its number) says what was undone. The run counter goes on and
    next_cluster_id never goes back: an id the undone transaction issued is not issued again.
    """
    config = config or ClusterConfig()
    with catalogue_lock(out_dir):
        catalogue = load_catalogue(out_dir)
        if catalogue.undo is None:
            raise UserError(f"there is nothing to undo in {out_dir}: no run or correction has been committed since")
        undone, state = int(catalogue.undo["run"]), catalogue.undo["state"]
        touched = sorted(clusters_touched_by(catalogue, undone)) or [0]
        events = [replace(event("undone", c, undone), run=catalogue.run + 1, time=now(), actor=PERSON) for c in touched]
        for name in RESTORED_BY_UNDO:
            catalogue.tables[name].segments = [Segment(**s) for s in state["tables"].get(name, [])]
        catalogue.model_id, catalogue.embedding_dim = state["model_id"], state["embedding_dim"]
        catalogue.assigned = state.get("assigned")
        pool = np.load(catalogue.directory / state["pool"]) if state["pool"] else np.zeros(0, dtype=np.uint64)
        change = CatalogueChange(
            images=None,
            clusters=None,
            events=events_table(events),
            runs=None,
            pool=pool,
            next_cluster_id=catalogue.next_cluster_id,
        )
        catalogue.run += 1
        commit_change(catalogue, change, config.seed)
        compact(catalogue, config.seed)
        return Correction(run=catalogue.run, events=events)


def clusters_touched_by(catalogue: Catalogue, run: int) -> set[int]:
    """The clusters named by the events of transaction `run`: the newest events segments, read back to it."""
    table, touched = catalogue.tables["events"], set()
    for index in range(len(table.segments) - 1, -1, -1):
        segment = table.segment(index)
        runs = column_array(segment, "run")
        mine = runs == run
        touched |= set(column_array(segment, "cluster_id")[mine].tolist())
        touched |= set(column_array(segment, "other_id")[mine & (column_array(segment, "kind") != "undone")].tolist())
        if len(runs) and runs.min() < run:
            break
    return touched - {0}
