"""What a person should look at after a run: clusters that are probably one, and clusters probably mixed.

The evidence is what the run already has in hand, so the review costs what the batch costs:

- probably one: a merge the window found but the run left alone (over the churn budget, or with a
  confirmed cluster), and pairs of clusters near the batch whose prototypes are at least
  threshold - MERGE_MARGIN alike (on the chars benchmark every such pair is a look-alike pair, such
  as l/I or 0/O, which only a person can settle);
- probably mixed: a cluster the window found in pieces that the run did not split (confirmed, or
  with more members than cluster.exemplars, or over the churn budget).

Each suggestion carries the exact command that applies it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from replearn.catalogue.store import Catalogue
from replearn.clustering.neighbourhood import Neighbourhood
from replearn.clustering.placement import Placement

MERGE_MARGIN = 0.05


@dataclass(frozen=True)
class Suggestion:
    """A change for a person to consider: `kind` (merge or split) of `cluster_ids`, why, and the command."""

    kind: str
    cluster_ids: tuple[int, ...]
    reason: str
    command: str


def similar_pairs(view: Neighbourhood, changed: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (a, b, similarity) of active clusters of the view, one of them changed this run, most alike first."""
    active = (view.merged_into == 0) & (view.sizes > 0)
    ids = view.cluster_ids[active]
    mine = np.isin(ids, changed)
    if not mine.any() or len(ids) < 2:
        return []
    prototypes = view.prototypes[active]
    similarity = prototypes[mine] @ prototypes.T
    rows, columns = np.nonzero(similarity >= threshold - MERGE_MARGIN)
    pairs = {}
    for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
        a, b = int(ids[mine][row]), int(ids[column])
        if a != b:
            pairs[min(a, b), max(a, b)] = float(similarity[row, column])
    return sorted(((a, b, s) for (a, b), s in pairs.items()), key=lambda pair: (-pair[2], pair[0], pair[1]))


def review_suggestions(
    view: Neighbourhood, placement: Placement, changed: np.ndarray, threshold: float, out_dir: Path, limit: int
) -> list[Suggestion]:
    """At most `limit` merges and `limit` splits to review, the window's own findings first."""
    out = shlex.quote(str(out_dir))
    merges = [
        Suggestion(
            "merge",
            (owner, merged),
            f"most of cluster {merged}'s members fell in with cluster {owner}'s this run, but the run left "
            "them apart (a confirmed cluster, or over the churn budget)",
            f"replearn clusters merge {out} {owner} {merged}",
        )
        for merged, owner in sorted(placement.left_merges.items())
    ]
    listed = {frozenset(s.cluster_ids) for s in merges}
    for a, b, similarity in similar_pairs(view, changed, threshold):
        if frozenset((a, b)) not in listed:
            merges.append(
                Suggestion(
                    "merge",
                    (a, b),
                    f"their prototypes are {similarity:.3f} alike (threshold {threshold:.3f})",
                    f"replearn clusters merge {out} {a} {b}",
                )
            )
    splits = [
        Suggestion(
            "split",
            (cluster_id,),
            f"this run found it in pieces: {outside} of its members apart from the main part",
            f"replearn clusters split {out} {cluster_id}",
        )
        for cluster_id, outside in sorted(placement.left_in_pieces.items(), key=lambda item: (-item[1], item[0]))
    ]
    return merges[:limit] + splits[:limit]


def exemplar_sources(
    catalogue: Catalogue, view: Neighbourhood, batch_sources: dict[int, str], cluster_ids: set[int], samples: int
) -> dict[int, list[str]]:
    """Where the latest `samples` members of each cluster can be read, for the review montages.

    Members from this batch are not in the catalogue yet, so `batch_sources` (digest -> source) names them.
    """
    latest = {c: view.exemplars[int(view.rows_of(np.array([c]))[0])][-samples:] for c in sorted(cluster_ids)}
    wanted = np.concatenate([np.zeros(0, np.uint64), *latest.values()])
    stored = np.setdiff1d(wanted, np.fromiter(batch_sources, dtype=np.uint64, count=len(batch_sources)))
    if len(stored):
        rows = catalogue.image_rows(stored)
        batch_sources = batch_sources | dict(zip(stored.tolist(), rows.column("source").to_pylist(), strict=True))
    return {c: [batch_sources[int(d)] for d in digests] for c, digests in latest.items()}
