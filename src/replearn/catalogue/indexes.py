"""The faiss indexes written with catalogue segments: nearest clusters and nearest images, never updated.

Each clusters segment and each images segment gets its index when it is written (by a run, a
correction, a compaction or a migration), under its own name in `prototypes/` or `neighbours/`,
before the manifest that names the segment: a crash leaves an orphan, never a segment without its
index. A search memory-maps the file, so it reads only what it probes. A hit is a row position of
the segment, kept by the caller only where that row is still its key's newest (a later segment did
not supersede it).

Nearest clusters (prototypes/): the unit prototypes of a segment's active clusters. Segments under
IVF_MIN_ROWS get an exact flat index, larger ones an IVF index (faiss k-means on the segment, a list
per ROWS_PER_LIST rows) searched with cluster.nprobe lists. Both are where the nearest cluster can
differ from an exact search over every live prototype; benchmarks/cluster.py compares the clusters
with those of the format-1 code.

Nearest images (neighbours/): an IVF index whose lists are the segment's clusters. On data without
structure coarser than its look-alike groups (benchmarks/search.py: 800,000 images in groups of 20)
an IVF of 1,024 to 4,096 k-means lists finds 0.72 to 0.77 of the 10 nearest at nprobe 16; lists of
about 64 rows find nearly all, but k-means costs rows x lists per iteration (41 s for 3,125 lists
over 200,000 rows on two shared cores), too much for a compaction. A catalogue already holds that
partition, paid for by its runs: its clusters. So each clustered row is filed under its stored
cluster id, a list's centroid is the mean of those rows in the segment, and an unclustered row is
filed under its nearest centroid. The centroids are indexed as the prototypes are (flat or IVF),
which makes that index the IVF's quantizer, so a build costs what a prototype index costs plus a
pass over the rows, and a query probes cluster.nprobe lists. Rows are stored as 8-bit codes (a
quarter of their float32 bytes) and the candidates are scored again on the segment's own embedding
column, so similarities are exact. A segment without a clustered row with an embedding has no
index: search scans it, as it scans the segments of catalogues written before these indexes existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from replearn.config import ClusterConfig
from replearn.similarity import as_rows, unit_rows

if TYPE_CHECKING:
    import faiss

INDEX_SUFFIX = ".faiss"
# Beside the tables, so that a table's folder holds Arrow files alone.
INDEX_DIRS = {"clusters": "prototypes", "images": "neighbours"}
IVF_MIN_ROWS = 2_048
ROWS_PER_LIST = 64  # so that a probe scans the same number of rows whatever the segment size
RESCORED = 4  # image candidates per wanted neighbour, scored again exactly: 8-bit codes blur close ties


def index_path_of(catalogue_dir: Path, segment_file: str) -> Path:
    """The index of a segment: clusters/seg-000012.arrow -> prototypes/seg-000012.faiss, images/... -> neighbours/..."""
    segment = Path(segment_file)
    return catalogue_dir / INDEX_DIRS[segment.parent.name] / segment.with_suffix(INDEX_SUFFIX).name


def nearest_index(vectors: np.ndarray, ids: np.ndarray, seed: int) -> faiss.Index:
    """Unit vectors keyed by ids: exact below IVF_MIN_ROWS, else IVF (k-means, a list per ROWS_PER_LIST rows)."""
    import faiss

    dim = vectors.shape[1]
    index: faiss.Index
    if len(vectors) >= IVF_MIN_ROWS:
        lists = max(1, len(vectors) // ROWS_PER_LIST)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index.add_with_ids(vectors, ids.astype(np.int64))
    return index


def save_index(path: Path, index: faiss.Index) -> None:
    """Write an index durably, under its final name only when complete."""
    import faiss

    from replearn.atomic import atomic_path
    from replearn.catalogue.segments import fsync_file

    with atomic_path(path) as temporary:
        faiss.write_index(index, str(temporary))
        fsync_file(temporary)


def write_prototype_index(path: Path, sums: np.ndarray, active: np.ndarray, seed: int) -> None:
    """Index the prototypes of the active rows of a clusters segment (faiss ids are row positions)."""
    rows = np.flatnonzero(active)
    save_index(path, nearest_index(unit_rows(sums[rows]), rows, seed))


def write_image_index(
    path: Path, embeddings: np.ndarray, embedded: np.ndarray, cluster_ids: np.ndarray, seed: int
) -> None:
    """Index the embedded rows of an images segment in one list per cluster; no file when none is clustered.

    faiss ids are row positions. Unclustered rows go to the list whose centroid the quantizer finds
    nearest with the default cluster.nprobe, as a query would find it.
    """
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    rows = np.flatnonzero(embedded)
    clustered = cluster_ids[rows] > 0
    if not clustered.any():
        return
    vectors = as_rows(embeddings[rows])  # as stored: what an exact scan compares
    keys, lists = np.unique(cluster_ids[rows[clustered]], return_inverse=True)
    members = sp.csr_matrix((np.ones(len(lists), dtype=np.float32), (lists, np.arange(len(lists)))))
    centroids = unit_rows(members @ vectors[clustered])  # one pass over the rows, whatever the clusters' sizes
    quantizer = nearest_index(centroids, np.arange(len(keys)), seed)
    assignment = np.empty(len(rows), dtype=np.int64)
    assignment[clustered] = lists
    if not clustered.all():
        set_nprobe(quantizer, ClusterConfig().nprobe)
        assignment[~clustered] = quantizer.search(vectors[~clustered], 1)[1][:, 0]
    dim = vectors.shape[1]
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, len(keys), faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, False
    )
    index.train(vectors)  # the 8-bit ranges only: the quantizer holds every centroid already
    ids = rows.astype(np.int64)
    add_preassigned(index, vectors, assignment, ids)
    save_index(path, index)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Lists an IVF index probes, and those of its quantizer when that is an IVF index too; flat ones have none."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.nprobe = nprobe
        quantizer = faiss.downcast_index(index.quantizer)
        if isinstance(quantizer, faiss.IndexIVF):
            quantizer.nprobe = nprobe


def search_index(path: Path, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k nearest entries of each query in an index file; ids -1 where fewer exist.

    The file is memory-mapped, so an IVF search reads only the lists it probes.
    """
    import faiss

    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    except RuntimeError:
        if not path.is_file():  # deleted by a commit since the reader loaded its manifest
            raise FileNotFoundError(f"{path} is gone") from None
        raise
    set_nprobe(index, nprobe)
    if index.ntotal == 0:
        empty = np.full((len(queries), k), -1, dtype=np.int64)
        return np.full(empty.shape, -np.inf, dtype=np.float32), empty
    similarities, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return similarities, ids


def search_image_index(
    path: Path, queries: np.ndarray, embeddings: np.ndarray, k: int, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """(exact similarities, rows) of up to k images of a segment nearest each query, best first; rows -1 pad.

    RESCORED x k candidates come from the index's 8-bit codes; `embeddings` (the segment's column)
    scores them exactly, so the k kept are in the order an exact scan would give them.
    """
    _, rows = search_index(path, queries, RESCORED * k, nprobe)
    found = rows >= 0
    similarities = np.full(rows.shape, -np.inf, dtype=np.float32)
    similarities[found] = np.einsum("ij,ij->i", np.repeat(queries, found.sum(axis=1), axis=0), embeddings[rows[found]])
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarities, order, 1), np.take_along_axis(rows, order, 1)
