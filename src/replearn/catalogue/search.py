"""Search: which known clusters, and which catalogue images, is an image nearest to (`replearn search`).

The question a service asks ("is this a known cluster?"), answered from the index the scheduled runs
use: each clusters segment's nearest-prototype index (indexes.py) gives its k nearest active
clusters (Catalogue.top_clusters), so the cluster part costs what a run's placement costs, whatever
the catalogue's size. A hit passes when its similarity to the prototype reaches the threshold of the
catalogue's last run: what a run asks of an image before it joins a confirmed cluster.

The nearest catalogue images come from each images segment's index (indexes.py: one IVF list per
cluster, cluster.nprobe lists probed, candidates scored again exactly on the embedding column), so
a batch costs what the probed lists of each segment hold, not the catalogue: 0.21 to 0.51 s for
1,000 queries against a million 128-d images on two shared cores (0.33 to 0.52 s with the cluster
part), recall@10 0.979 of an exact scan (0.999 at nprobe 64), where an exact scan took 2 to 21 s
with the machine's load (benchmarks/search.py, docs/cluster.md). A segment without an index
(written before these indexes existed, or holding no clustered image) is scanned exactly, as every
segment was before. Only an image's newest row counts: a segment whose top hits include superseded
rows is searched again deeper until it has k live ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Group, RenderableType
from rich.text import Text

from replearn.catalogue.indexes import index_path_of, search_image_index
from replearn.catalogue.members import chain_of, merge_forest
from replearn.catalogue.segments import column_array, vectors_of
from replearn.catalogue.store import Catalogue, load_catalogue
from replearn.config import ClusterConfig, Config
from replearn.console import results_table
from replearn.errors import UserError
from replearn.similarity import unit_rows

CLUSTER_COLUMNS = ["query", "rank", "cluster_id", "name", "state", "similarity", "passes"]
IMAGE_COLUMNS = ["query", "rank", "path", "key", "cluster_id", "similarity"]
READ_ATTEMPTS = 3  # a concurrent run deletes what two commits ago named: reread the manifest


@dataclass
class SearchResult:
    """The nearest clusters and images of each query, best first; rank counts from 1 per query."""

    clusters: pd.DataFrame  # CLUSTER_COLUMNS; passes: similarity >= threshold
    images: pd.DataFrame  # IMAGE_COLUMNS; cluster_id: the image's cluster now (merges followed, 0: none)
    threshold: float

    def __rich__(self) -> RenderableType:
        """Per query: its nearest clusters, then its nearest catalogue images (paths folded, never cut)."""
        parts: list[RenderableType] = []
        for query in dict.fromkeys([*self.clusters["query"], *self.images["query"]]):
            clusters = self.clusters[self.clusters["query"] == query]
            parts.append(
                results_table(
                    f"{query}: nearest clusters (threshold {self.threshold:.4f})",
                    ("rank", "cluster", "name", "state", "similarity", "passes"),
                    *(
                        (str(r), str(c), n if isinstance(n, str) else "", s, f"{v:.4f}", "yes" if p else "no")
                        for r, c, n, s, v, p in clusters[CLUSTER_COLUMNS[1:]].itertuples(index=False)
                    ),
                )
            )
            images = self.images[self.images["query"] == query]
            if len(images):
                table = results_table(
                    f"{query}: nearest catalogue images",
                    ("rank", "image", "cluster", "similarity"),
                    *(
                        (str(r), p, str(c), f"{v:.4f}")
                        for r, p, c, v in images[["rank", "path", "cluster_id", "similarity"]].itertuples(index=False)
                    ),
                )
                table.columns[1].overflow = "fold"
                parts.append(table)
        if self.clusters.empty:
            parts.append(Text("the catalogue has no cluster yet: every image is unclustered"))
        return Group(*parts)


def open_for_search(out_dir: Path) -> Catalogue:
    """OUT's committed catalogue; none, or one without images, is an error that says how to make one."""
    catalogue = load_catalogue(out_dir)
    if not catalogue.images.segments:
        raise UserError(f"{out_dir} holds no cluster catalogue yet (run `replearn cluster MODEL INBOX {out_dir}`)")
    return catalogue


def nearest_images(
    catalogue: Catalogue, queries: np.ndarray, k: int, nprobe: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment, row, similarity) of the k catalogue images nearest each query, best first.

    Each images segment answers from its index (indexes.py: cluster lists, nprobe of them probed),
    or by an exact scan when it has none. Segment -1 marks places left empty (superseded rows); a
    catalogue of fewer than k images gives fewer columns.
    """
    n, table, dim = len(queries), catalogue.images, catalogue.embedding_dim or 0
    found = [(np.full((n, 0), -1), np.full((n, 0), -1), np.full((n, 0), -np.inf, dtype=np.float32))]
    for index in range(len(table.segments)):
        vectors = vectors_of(table.segment(index), "embedding", dim)
        if len(vectors) == 0:
            continue
        path = index_path_of(catalogue.directory, table.segments[index].file)
        indexed = path.is_file()
        depth = k
        while True:
            depth = min(depth, len(vectors))
            if indexed:
                similarities, rows = search_image_index(path, queries, vectors, depth, nprobe)
            else:
                similarities, rows = exact_search(queries, vectors, depth)
            live = live_rows(catalogue, index, rows)
            # Superseded rows among the hits: look deeper until k live ones, or the probed lists run out.
            if depth == len(vectors) or ((live.sum(axis=1) >= k) | (rows < 0).any(axis=1)).all():
                break
            depth *= 4
        similarities = np.where(live, similarities, -np.inf).astype(np.float32)
        found.append((np.where(live, index, -1), np.where(live, rows, -1), similarities))
    segments, rows, similarities = (np.concatenate(parts, axis=1) for parts in zip(*found, strict=True))
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(similarities, order, 1)
    return np.take_along_axis(segments, order, 1), np.take_along_axis(rows, order, 1), best


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, rows) of the k rows of `vectors` nearest each query: faiss's blocked brute force."""
    import faiss

    return faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), k, faiss.METRIC_INNER_PRODUCT)


def live_rows(catalogue: Catalogue, index: int, rows: np.ndarray) -> np.ndarray:
    """Whether each hit row of images segment `index` is still its image's newest row."""
    live = rows >= 0
    if live.any():
        digests = column_array(catalogue.images.segment(index), "digest")[rows[live]]
        live[live] = catalogue.images.find(digests)[0] == index
    return live


def search_embeddings(
    out_dir: Path,
    embeddings: np.ndarray,
    queries: list[str],
    clusters: int = 3,
    images: int = 5,
    nprobe: int | None = None,
) -> SearchResult:
    """The nearest `clusters` clusters and `images` catalogue images of each embedding (row i is `queries[i]`).

    nprobe: IVF lists searched per segment, clusters and images [default: cluster.nprobe, as runs search].
    Search takes no lock: a run that commits twice while it reads (a run and its compaction) may
    delete a segment it loaded from the manifest before. Then it reads the new manifest and tries
    again, READ_ATTEMPTS times in all.
    """
    nprobe = ClusterConfig().nprobe if nprobe is None else nprobe
    attempt = 1
    while True:
        try:
            return search_catalogue(open_for_search(out_dir), embeddings, queries, clusters, images, nprobe)
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS:
                raise
            attempt += 1


def search_catalogue(
    catalogue: Catalogue, embeddings: np.ndarray, queries: list[str], clusters: int, images: int, nprobe: int
) -> SearchResult:
    """search_embeddings on one loaded catalogue."""
    out_dir = catalogue.directory.parent
    if embeddings.shape[1] != catalogue.embedding_dim:
        raise UserError(
            f"the catalogue in {out_dir} holds {catalogue.embedding_dim}-dim embeddings, the queries are "
            f"{embeddings.shape[1]}-dim: embed them with the model the catalogue was built with"
        )
    embeddings = unit_rows(embeddings).astype(np.float32)
    threshold = catalogue.last_threshold()
    forest = merge_forest(catalogue)
    cluster_frame = pd.DataFrame(columns=CLUSTER_COLUMNS)
    if clusters > 0 and catalogue.clusters.segments:
        ids, similarities = catalogue.top_clusters(embeddings, clusters, nprobe)
        hit = ids > 0
        query_of, rank_of = np.nonzero(hit)
        rows = catalogue.cluster_rows(ids[hit]).select(["name", "state"]).to_pydict()
        cluster_frame = pd.DataFrame(
            {
                "query": [queries[q] for q in query_of],
                "rank": rank_of + 1,
                "cluster_id": ids[hit],
                "name": rows["name"],
                "state": rows["state"],
                "similarity": similarities[hit].astype(np.float64),
                "passes": similarities[hit] >= threshold,
            }
        )
    image_frame = pd.DataFrame(columns=IMAGE_COLUMNS)
    if images > 0:
        segments, rows_of, similarities = nearest_images(catalogue, embeddings, images, nprobe)
        hit = segments >= 0
        query_of, rank_of = np.nonzero(hit)
        found = catalogue.images.take(segments[hit], rows_of[hit]).select(["path", "key", "cluster_id"]).to_pydict()
        image_frame = pd.DataFrame(
            {
                "query": [queries[q] for q in query_of],
                "rank": rank_of + 1,
                "path": found["path"],
                "key": found["key"],
                "cluster_id": [chain_of(int(c), forest)[-1] if c else 0 for c in found["cluster_id"]],
                "similarity": similarities[hit].astype(np.float64),
            }
        )
    return SearchResult(clusters=cluster_frame, images=image_frame, threshold=threshold)


def search_images(
    model: Path, out_dir: Path, paths: list[Path], clusters: int = 3, images: int = 5, config: Config | None = None
) -> SearchResult:
    """Embed image files with the ONNX model and search OUT's catalogue; the model must be the catalogue's."""
    from replearn.artifacts.hashing import sha256_file
    from replearn.embedding.batches import embed_paths
    from replearn.embedding.onnx import OnnxEmbedder

    config = config or Config()
    catalogue = open_for_search(out_dir)
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"image {missing[0]} does not exist or is not a file")
    embedder = OnnxEmbedder(model, provider=config.embed.provider, threads=config.embed.threads)
    model_id = f"sha256:{sha256_file(model)}"
    if catalogue.model_id != model_id:
        raise UserError(
            f"the catalogue in {out_dir} was built with another model ({catalogue.model_id}; {model} is {model_id}): "
            "embeddings of different models are not comparable. Search with the model that built it"
        )
    done = embed_paths(embedder, paths, config.embed.batch_size, config.embed.workers, "raise", "embedding queries")
    return search_embeddings(out_dir, done.embeddings, [str(p) for p in paths], clusters, images, config.cluster.nprobe)
