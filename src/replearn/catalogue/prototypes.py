"""The nearest-cluster index: one faiss index per clusters segment, written with it and never updated.

A segment's index holds the prototypes (unit-length member sums) of its active clusters, keyed by
row. Each segment gives its nearest row, kept only where that row is still its cluster's newest (a
later segment did not supersede it): the newest segment that holds a cluster answers for it.
Segments under IVF_MIN_ROWS get an exact flat index, larger ones an IVF index (faiss k-means on the
segment, a list per ROWS_PER_LIST rows) searched with cluster.nprobe lists. Both are where the
nearest cluster can differ from an exact search over every live prototype; benchmarks/cluster.py
compares the clusters with those of the format-1 code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replearn.similarity import unit_rows

INDEX_SUFFIX = ".faiss"
INDEX_DIR = "prototypes"  # beside the tables, so that a table's folder holds Arrow files alone
IVF_MIN_ROWS = 2_048
CANDIDATES = 1
ROWS_PER_LIST = 64  # so that a probe scans the same number of rows whatever the segment size


def index_path_of(catalogue_dir: Path, segment_file: str) -> Path:
    """The index of a clusters segment: clusters/seg-000012.arrow -> prototypes/seg-000012.faiss"""
    return catalogue_dir / INDEX_DIR / Path(segment_file).with_suffix(INDEX_SUFFIX).name


def write_prototype_index(path: Path, sums: np.ndarray, active: np.ndarray, seed: int) -> None:
    """Index the prototypes of the active rows of a segment (faiss ids are row positions), durably."""
    import faiss

    from replearn.atomic import atomic_path
    from replearn.catalogue.segments import fsync_file

    rows = np.flatnonzero(active)
    vectors = unit_rows(sums[rows]).astype(np.float32)
    dim = sums.shape[1]
    index: faiss.Index
    if len(rows) >= IVF_MIN_ROWS:
        lists = max(1, len(rows) // ROWS_PER_LIST)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index.add_with_ids(vectors, rows.astype(np.int64))
    with atomic_path(path) as temporary:
        faiss.write_index(index, str(temporary))
        fsync_file(temporary)


def search_prototype_index(
    path: Path, queries: np.ndarray, nprobe: int, k: int = CANDIDATES
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, rows) of the k nearest prototypes of each query; rows -1 where fewer exist.

    The file is memory-mapped, so an IVF search reads only the lists it probes.
    """
    import faiss

    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    except RuntimeError:
        if not path.is_file():  # deleted by a commit since the reader loaded its manifest
            raise FileNotFoundError(f"{path} is gone") from None
        raise
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    if index.ntotal == 0:
        empty = np.full((len(queries), k), -1, dtype=np.int64)
        return np.full(empty.shape, -np.inf, dtype=np.float32), empty
    similarities, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return similarities, rows
