"""Finding a person's images and a cluster's members in the catalogue, for corrections and `show`.

A run never needs these: it reads what its batch touches by key. A person names images by path and
asks for every member of a cluster, and neither is a key of the images table, so both scan one
memory-mapped column of every images segment (8 bytes an image for cluster_id, the paths' bytes for
path) and then keep the rows that are still their image's newest. That is O(catalogue) reads per
correction: about 8 MB for a million images, a few milliseconds from the page cache.

Merges are followed as readers do (`merged_into`, which may chain): the members of a cluster are the
images whose stored cluster_id is that cluster or one merged into it, directly or through others.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replearn.catalogue.segments import Table, column_array, merge_tables
from replearn.catalogue.store import Catalogue, key_digests
from replearn.errors import UserError


def newest_rows_where(table: Table, column: str, values: pa.Array) -> pa.Table:
    """The newest row of every key whose `column` is in `values` (a scan of that column, segment by segment)."""
    parts = []
    for index in range(len(table.segments)):
        segment = table.segment(index)
        hits = segment.filter(pc.is_in(segment.column(column), value_set=values))
        if hits.num_rows == 0:
            continue
        where, _ = table.find(column_array(hits, table.key or ""))
        parts.append(hits.filter(pa.array(where == index)))  # a later segment's row of the same key wins
    return pa.concat_tables(parts) if parts else table.empty()


def merge_forest(catalogue: Catalogue) -> dict[int, int]:
    """Every merged cluster -> the cluster it was merged into, from the id and merged_into columns alone."""
    table = catalogue.clusters
    if not table.segments:
        return {}
    parts = [table.segment(i).select(["id", "merged_into"]) for i in range(len(table.segments))]
    newest = merge_tables(parts, "id")
    ids, owners = column_array(newest, "id"), column_array(newest, "merged_into")
    merged = owners > 0
    return dict(zip(ids[merged].tolist(), owners[merged].tolist(), strict=True))


def chain_of(cluster_id: int, forest: dict[int, int]) -> list[int]:
    """The cluster and every cluster it was merged into, in order: its current cluster is the last.

    >>> chain_of(5, {5: 3, 3: 1})
    [5, 3, 1]
    """
    chain = [cluster_id]
    while chain[-1] in forest:
        chain.append(forest[chain[-1]])
    return chain


def subtree_of(cluster_ids: Iterable[int], forest: dict[int, int]) -> set[int]:
    """The clusters and every cluster merged into them, directly or through others.

    >>> sorted(subtree_of([1], {5: 3, 3: 1, 4: 2}))
    [1, 3, 5]
    """
    children: dict[int, list[int]] = {}
    for child, owner in forest.items():
        children.setdefault(owner, []).append(child)
    found, pending = set(), list(cluster_ids)
    while pending:
        cluster_id = pending.pop()
        if cluster_id not in found:
            found.add(cluster_id)
            pending.extend(children.get(cluster_id, []))
    return found


def members_of(catalogue: Catalogue, cluster_ids: Iterable[int]) -> pa.Table:
    """The images rows whose stored cluster_id is one of `cluster_ids` (merges are not followed here)."""
    ids = pa.array(sorted(set(cluster_ids)), pa.int64())
    return newest_rows_where(catalogue.images, "cluster_id", ids)


def resolve_images(catalogue: Catalogue, names: Sequence[str]) -> np.ndarray:
    """The digests of images named by key (path@sha256) or by path as stored; unknown or ambiguous names are errors."""
    digests = key_digests(list(names))
    by_key = catalogue.known(names)
    paths = [name for name, known in zip(names, by_key, strict=True) if not known]
    if paths:
        rows = newest_rows_where(catalogue.images, "path", pa.array(sorted(set(paths)), pa.string()))
        found: dict[str, list[str]] = {}
        for path, key in zip(rows.column("path").to_pylist(), rows.column("key").to_pylist(), strict=True):
            found.setdefault(path, []).append(key)
        missing = [path for path in paths if path not in found]
        if missing:
            raise UserError(
                f"{len(missing)} image(s) are not in the catalogue in {catalogue.directory.parent}, "
                f"e.g. {missing[0]!r}; name an image by its path or key (path@sha256), as `clusters show` lists it"
            )
        ambiguous = {path: keys for path, keys in found.items() if len(keys) > 1}
        if ambiguous:
            path, keys = next(iter(ambiguous.items()))
            raise UserError(f"path {path!r} names {len(keys)} images (its content changed): give one key of {keys}")
        for position in np.flatnonzero(~by_key).tolist():
            digests[position] = key_digests(found[names[position]])[0]
    _, first = np.unique(digests, return_index=True)
    return digests[np.sort(first)]  # each image once, in the order given
