"""report.html for one clustering run: a page a person can skim to check what the run did, and review.

It opens with what to review (review.py: clusters that are probably one, clusters probably mixed),
each with montages side by side and the command that applies it, and the run's revisions (splits,
merges, dissolves). Then it shows, for each cluster the run created or grew, its most typical new members (most similar
to the prototype) beside its least typical ones, least cohesive clusters first and flagged when
their cohesion is below the threshold, so that impure clusters stand out; then the images left
unclustered, and the size distribution of all clusters. It is one self-contained file: the montages
are JPEG data URIs inside it (at most MAX_IMAGE_BYTES of them), so it opens from disk without a
server and renders in the ZenML dashboard, where relative links resolve to nothing; and it never
points at inbox images, which the next scheduled job may move away.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from replearn.clustering.review import Suggestion
from replearn.config import ClusterConfig, ResizeConfig
from replearn.data.images import load_image
from replearn.html_images import PageImages

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
MAX_TABLE_ROWS = 1000
UNCLUSTERED_ROWS = 6
# The dashboard fetches the page whole; at the defaults (100 clusters, 8 thumbnails of 64 px) the montages
# take well under this, so it only binds when cluster.report_* ask for many or large thumbnails.
MAX_IMAGE_BYTES = 8 * 2**20

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; }
.bar { background: #4a7bd0; height: 12px; display: inline-block; }
.cluster { margin: 1.2em 0; }
.cluster img, .unclustered img { image-rendering: pixelated; border: 1px solid #ddd; }
.muted { color: #777; }
.side { display: flex; gap: 1em; }
figure { margin: 0; }
pre { background: #f6f6f6; padding: 4px 8px; }
"""


def build_montage(sources: Sequence[str], columns: int, thumbnail: int) -> Image.Image | None:
    """Thumbnails of the readable `sources` in a grid; None when none is readable.

    Unreadable or vanished files are skipped: a report must not fail because an inbox moved on.
    """
    resize = ResizeConfig(size=thumbnail, mode="pad")
    tiles = []
    for source in sources:
        try:
            tiles.append(load_image(Path(source), resize))
        except Exception as error:  # Pillow raises many types; a missing thumbnail is not worth a failed run
            log.debug("no thumbnail for %s: %s", source, error)
    if not tiles:
        return None
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (min(columns, len(tiles)) * thumbnail, rows * thumbnail), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * thumbnail, (i // columns) * thumbnail))
    return sheet


def size_histogram(sizes: np.ndarray) -> list[tuple[str, int]]:
    """Cluster counts in power-of-two size bins, the shape that reads well for long-tailed sizes.

    >>> size_histogram(np.array([1, 3, 4, 9]))
    [('1', 1), ('2-3', 1), ('4-7', 1), ('8-15', 1)]
    """
    if len(sizes) == 0:
        return []
    bins = np.floor(np.log2(np.maximum(sizes, 1))).astype(int)
    counts = np.bincount(bins)
    return [(str(1 << b) if b == 0 else f"{1 << b}-{(2 << b) - 1}", int(c)) for b, c in enumerate(counts) if c]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def format_value(value: float | int) -> str:
    """Counts as integers, scores with four decimals.

    >>> format_value(62), format_value(0.91234)
    ('62', '0.9123')
    """
    return str(value) if isinstance(value, int | np.integer) else f"{value:.4f}"


def typical_and_atypical(members: pd.DataFrame, samples: int) -> dict[int, tuple[list[str], list[str]]]:
    """Per cluster id: sources of its members most and least similar to its prototype, `samples` // 2 each.

    One sort for all the clusters given, so a report costs one pass over the members it shows.

    >>> frame = pd.DataFrame({"cluster_id": [1, 1, 1, 2], "similarity": [0.9, 0.5, 0.7, 1.0], "source": list("abcd")})
    >>> typical_and_atypical(frame, 4)
    {1: (['a', 'c'], ['b']), 2: (['d'], [])}
    """
    half = max(1, samples // 2)
    clustered = members[members["cluster_id"] > 0]
    ranked = clustered.sort_values(["cluster_id", "similarity"], ascending=[True, False], kind="stable")
    shown: dict[int, tuple[list[str], list[str]]] = {}
    for cluster_id, group in ranked.groupby("cluster_id", sort=False):
        sources = list(group["source"])
        typical = sources[:half]
        shown[int(cluster_id)] = typical, sources[len(typical) :][-half:][::-1]
    return shown


def _run_files(run_dir: Path) -> str:
    """The run's other files, named but not linked: the page must make sense where they are not (the dashboard)."""
    names = ["assignments.csv", "clusters.json", "metrics.json", "failures.csv"]
    present = " · ".join(name for name in names if (run_dir / name).is_file())
    return f'<span class="muted">beside this page in the run folder:</span> {present}' if present else ""


def review_section(
    suggestions: Sequence[Suggestion], sources: dict[int, list[str]], pictures: PageImages, config: ClusterConfig
) -> str:
    """The suggestions to review: reason, the clusters' latest members side by side, the command that applies it."""
    parts = [
        "<h2>To review</h2>",
        '<p class="muted">Probably one cluster, or probably mixed: what this run saw but leaves to a person. '
        "Each montage shows a cluster's latest members; the command below it applies the change "
        "(`replearn clusters undo OUT` takes it back).</p>",
    ]
    for suggestion in suggestions:
        montages = []
        for cluster_id in suggestion.cluster_ids:
            shown = sources.get(cluster_id, [])
            montage = build_montage(shown, len(shown), config.thumbnail_size) if shown else None
            tag = pictures.tag(montage, f"latest members of cluster {cluster_id}") if montage else None
            montages.append(f"<figure>{tag or ''}<figcaption>cluster {cluster_id}</figcaption></figure>")
        title = f"{suggestion.kind} {' + '.join(str(c) for c in suggestion.cluster_ids)}"
        parts.append(
            f'<div class="cluster"><h3>{html.escape(title)}</h3><p>{html.escape(suggestion.reason)}</p>'
            f'<div class="side">{"".join(montages)}</div><pre>{html.escape(suggestion.command)}</pre></div>'
        )
    return "".join(parts)


def write_report(
    run_dir: Path,
    summary: dict[str, Any],
    members: pd.DataFrame,
    failures: Sequence[tuple[str, str]],
    metrics: dict[str, float],
    config: ClusterConfig,
    suggestions: Sequence[Suggestion] = (),
    sources: dict[int, list[str]] | None = None,
) -> Path:
    """Write run_dir/report.html, its montages inside it; the other run files must exist already.

    `sources` names the images shown for each cluster a suggestion is about.
    """
    pictures = PageImages(MAX_IMAGE_BYTES)
    parts = [f"<h1>replearn clusters: run {summary['run']}</h1>", f"<p>{_run_files(run_dir)}</p>"]
    facts = [
        ("new images", summary["new_images"]),
        ("joined existing clusters", summary["assigned_to_existing"]),
        ("new clusters", summary["new_clusters"]),
        ("earlier unclustered images now clustered", summary["earlier_unclustered_joined"]),
        ("unclustered (cluster 0) this run", summary["unclustered"]),
        ("unreadable images", len(failures)),
        ("cluster ids issued so far (merged ones included)", summary["clusters_total"]),
        ("unclustered images kept for later runs (pool)", summary["pool"]),
        ("unclustered images retired from the pool this run", summary["retired_from_pool"]),
        ("clusters merged into another this run", summary["merged"]),
        ("clusters split / dissolved this run", f"{summary['split']} / {summary['dissolved']}"),
        (
            "earlier images whose cluster id this run changed (churn)",
            f"{summary['changed_ids']} ({summary['churn']:.1%})",
        ),
        ("threshold", f"{summary['threshold']:.4f}"),
        ("min_size", config.min_size),
    ]
    parts.append(_table(["", ""], [(html.escape(name), value) for name, value in facts]))
    if metrics:
        parts.append("<h2>Agreement with class folders</h2>")
        parts.append(_table(["metric", "value"], [(html.escape(k), format_value(v)) for k, v in metrics.items()]))

    if suggestions:
        parts.append(review_section(suggestions, sources or {}, pictures, config))
    if summary["split_this_run"] or summary["dissolved_this_run"]:
        parts.append("<h2>Revised this run</h2>")
        parts.append(
            '<p class="muted">Automatic clusters this run found in pieces: the largest part kept the id, each '
            "other part got a new one (split from); a cluster whose members no longer form a group of "
            "cluster.min_size was dissolved, its images back to unclustered. Confirmed clusters are never revised.</p>"
        )
        revised = [(new, f"split from {old}") for new, old in summary["split_this_run"].items()]
        revised += [(cluster_id, "dissolved") for cluster_id in summary["dissolved_this_run"]]
        parts.append(_table(["cluster", "change"], revised))
    if summary["merged_this_run"]:
        parts.append("<h2>Merged this run</h2>")
        parts.append(
            '<p class="muted">Most exemplars of these clusters fell in with another cluster\'s: they are one. '
            "Both keep their ids and members; clusters.json's merged_into records the link, and new images "
            "go to the cluster merged into.</p>"
        )
        parts.append(_table(["cluster", "merged into"], list(summary["merged_this_run"].items())))

    clusters = pd.DataFrame(summary["clusters"], columns=["id", "size", "cohesion", "added_this_run", "new_this_run"])
    parts.append("<h2>Sizes of the clusters this run created, grew or merged</h2>")
    histogram = size_histogram(clusters["size"].to_numpy())
    widest = max((count for _, count in histogram), default=1)
    parts.append(
        _table(
            ["size", "clusters", ""],
            [
                (size, count, f'<span class="bar" style="width:{300 * count // widest}px"></span>')
                for size, count in histogram
            ],
        )
    )

    # The unclustered montage is one picture; it takes its share of the budget before the clusters do.
    unclustered = members.loc[members["cluster_id"] == 0, "source"]
    limit = config.report_samples * UNCLUSTERED_ROWS
    unclustered_montage = build_montage(list(unclustered.head(limit)), config.report_samples, config.thumbnail_size)
    unclustered_tag = pictures.tag(unclustered_montage, "unclustered images") if unclustered_montage else None

    touched = clusters[clusters["added_this_run"] > 0].sort_values(["cohesion", "id"])
    threshold = summary["threshold"]
    shown = touched.head(config.report_clusters)
    parts.append(
        f"<h2>Clusters this run ({len(touched)})</h2>"
        f'<p class="muted">least cohesive first; montages of {len(shown)} of them (at most '
        f"cluster.report_clusters = {config.report_clusters}, within {MAX_IMAGE_BYTES // 2**20} MB of pictures "
        f"in this page): left, the new members most similar to the prototype; right, "
        f"the least similar. Cohesion (mean similarity of members to the prototype) below the threshold "
        f"{threshold:.3f} is flagged: such a cluster likely mixes classes.</p>"
    )
    montage_sources = typical_and_atypical(members[members["cluster_id"].isin(shown["id"])], config.report_samples)
    for row in shown.itertuples():
        typical, atypical = montage_sources.get(row.id, ([], []))
        montages, over_budget = [], False
        for kind, chosen in (("typical", typical), ("atypical", atypical)):
            montage = build_montage(chosen, len(chosen), config.thumbnail_size) if chosen else None
            tag = pictures.tag(montage, f"{kind} members of cluster {row.id}") if montage else None
            montages += [tag] if tag else []
            over_budget |= montage is not None and tag is None
        label = "new" if row.new_this_run else "grew"
        flag = " LOW COHESION" if row.cohesion < threshold else ""
        title = (
            f"Cluster {row.id} ({label}): {row.size} images, +{row.added_this_run} this run, "
            f"cohesion {row.cohesion:.3f}{flag}"
        )
        missing = "montage left out (picture budget spent)" if over_budget else "no readable images to show"
        images = " &nbsp; ".join(montages) or f'<span class="muted">{missing}</span>'
        parts.append(f'<div class="cluster"><h3>{html.escape(title)}</h3>{images}</div>')
    if len(touched) > config.report_clusters:
        parts.append(f'<p class="muted">{len(touched) - config.report_clusters} more in clusters.json.</p>')

    if pictures.left_out:
        parts.append(
            f'<p class="muted">{pictures.left_out} montages left out: this page holds at most '
            f"{MAX_IMAGE_BYTES // 2**20} MB of pictures (fewer cluster.report_clusters, report_samples or a smaller "
            "thumbnail_size fit more clusters).</p>"
        )

    parts.append(f"<h2>Unclustered this run ({len(unclustered)})</h2>")
    if unclustered_tag:
        parts.append(f'<div class="unclustered">{unclustered_tag}</div>')
        if len(unclustered) > limit:
            parts.append(f'<p class="muted">showing {limit}; all are in assignments.csv with cluster_id 0.</p>')

    parts.append("<h2>All clusters this run changed</h2>")
    listed = pd.DataFrame(summary["clusters"], columns=["id", "name", "state", "size", "cohesion", "added_this_run"])
    listed["name"] = listed["name"].fillna("")
    rows = [
        (r.id, html.escape(r.name), r.state, r.size, f"{r.cohesion:.3f}", r.added_this_run)
        for r in listed.sort_values("id").head(MAX_TABLE_ROWS).itertuples()
    ]
    parts.append(_table(["id", "name", "state", "size", "cohesion", "added this run"], rows))
    if len(clusters) > MAX_TABLE_ROWS:
        parts.append(f'<p class="muted">first {MAX_TABLE_ROWS} of {len(clusters)}; all are in clusters.json.</p>')
    if failures:
        parts.append("<h2>Unreadable images</h2>")
        parts.append(
            _table(["path", "error"], [(html.escape(p), html.escape(e)) for p, e in failures[:MAX_TABLE_ROWS]])
        )

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>replearn clusters: run {summary['run']}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
    report = run_dir / REPORT_FILE
    report.write_text(page, encoding="utf-8")
    return report
