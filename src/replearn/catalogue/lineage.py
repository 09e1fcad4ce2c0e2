"""A cluster's lineage: every event that touched it or a cluster it was merged or split with, in order.

`replearn clusters history OUT ID` reads the whole events table (append-only, one row per change:
about 60 bytes a row), which is a person's question, not a run's: O(events) once per call.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from replearn.catalogue.read import read_table
from replearn.errors import UserError

LINKS = ("merged_into", "split_from")  # the events whose two ids are one lineage


def describe_event(kind: str, cluster_id: int, other_id: int, images: int, name: str | None = None) -> str:
    """One event as a sentence a person reads.

    >>> describe_event("split_from", 9, 3, 4)
    'cluster 9 split from cluster 3 with 4 images'
    >>> describe_event("moved", 2, 0, 1)
    '1 images moved to cluster 2 from unclustered'
    >>> describe_event("named", 2, 0, 0, "receipts")
    "cluster 2 named 'receipts'"
    """
    source = f"cluster {other_id}" if other_id else "unclustered"
    undone = f"run or correction {other_id} undone" + (f", which changed cluster {cluster_id}" if cluster_id else "")
    sentences = {
        "created": f"cluster {cluster_id} created with {images} images",
        "joined": f"{images} images joined cluster {cluster_id}",
        "merged_into": f"cluster {cluster_id} ({images} images) merged into cluster {other_id}",
        "named": f"cluster {cluster_id} named {name!r}",
        "confirmed": f"cluster {cluster_id} confirmed",
        "split_from": f"cluster {cluster_id} split from cluster {other_id} with {images} images",
        "moved": f"{images} images moved to cluster {cluster_id} from {source}",
        "rejected": f"{images} images rejected from cluster {cluster_id}",
        "undone": undone,
        "promoted": f"cluster {cluster_id} promoted to class {name!r}, {images} images copied",
    }
    return sentences.get(kind, f"{kind}: cluster {cluster_id}, other {other_id}, {images} images")


def lineage_of(cluster_id: int, events: pd.DataFrame) -> set[int]:
    """The cluster and every cluster linked to it by merges and splits, in either direction, transitively.

    >>> events = pd.DataFrame({"kind": ["split_from", "merged_into", "created"], "cluster_id": [9, 3, 4],
    ...                        "other_id": [3, 1, 0]})
    >>> sorted(lineage_of(9, events))
    [1, 3, 9]
    """
    links = events[events["kind"].isin(LINKS)]
    pairs = list(zip(links["cluster_id"].astype(int), links["other_id"].astype(int), strict=True))
    lineage, grown = {cluster_id}, True
    while grown:
        linked = {b for a, b in pairs if a in lineage} | {a for a, b in pairs if b in lineage}
        grown = not linked <= lineage
        lineage |= linked
    return lineage


def cluster_history(out_dir: Path, cluster_id: int) -> pd.DataFrame:
    """Every event of the cluster's lineage, oldest first, with a `what` column that says it in words."""
    events = read_table(out_dir, "events")
    if "name" not in events:  # a catalogue whose events were all written before names were recorded
        events["name"] = None
    clusters = read_table(out_dir, "clusters")
    if cluster_id not in set(clusters["id"].astype(int)) and cluster_id not in set(events["cluster_id"].astype(int)):
        raise UserError(f"there is no cluster {cluster_id} in {out_dir} (`replearn clusters list` shows them)")
    lineage = lineage_of(cluster_id, events)
    other = events["other_id"].isin(lineage) & (events["kind"] != "undone")  # an undone event's other_id is a run
    history = events[events["cluster_id"].isin(lineage) | other].sort_values("run", kind="stable")
    columns = ["kind", "cluster_id", "other_id", "images", "name"]
    what = [describe_event(*row) for row in history[columns].itertuples(False)]
    return history.assign(what=what).reset_index(drop=True)
