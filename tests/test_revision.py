"""Scheduled runs revise automatic clusters: split, dissolve, within the churn budget, with an event per change.

Points on a circle in 2-D, so every similarity is the cosine of an angle and the expected groups can be
read off by hand: run 1 clusters at a loose threshold (components), run 2 at a strict one, so the
window of run 2 finds run 1's cluster in pieces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from catalogue_checks import assert_rows_match_members
from replearn.catalogue.corrections import confirm_clusters
from replearn.catalogue.read import current_assignments, follow_merges, merges, read_table
from replearn.catalogue.store import catalogue_lock, load_catalogue
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into, revise_catalogue
from replearn.config import ClusterConfig

LOOSE = ClusterConfig(min_size=3, method="components", max_churn=1.0)


def batch_at(degrees: list[float], prefix: str) -> ImageBatch:
    """One image per angle, named <prefix>/<i>.png."""
    radians = np.deg2rad(np.array(degrees))
    embeddings = np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)
    paths = [f"{prefix}/{i}.png" for i in range(len(degrees))]
    return ImageBatch(paths=paths, sha256=[f"sha-{p}" for p in paths], sources=paths, embeddings=embeddings)


def current(out: Path) -> dict[str, int]:
    table = current_assignments(out)
    return dict(zip(table["path"], table["cluster_id"], strict=True))


def events_of(out: Path) -> list[tuple[int, str, int, int, int]]:
    events = read_table(out, "events")
    return list(events[["run", "kind", "cluster_id", "other_id", "images"]].itertuples(index=False, name=None))


def first_run_of_two_parts(out: Path) -> None:
    """Run 1 at cos 40 deg (0.766 > 0.7): four images at 0-3 deg and three at 40-42 deg form one cluster."""
    cluster_embeddings_into(LOOSE, batch_at([0, 1, 2, 3, 40, 41, 42], "day1"), out, 0.7, "m")
    assert set(current(out).values()) == {1}


def test_a_cluster_found_in_two_parts_is_split_and_the_larger_part_keeps_the_id(tmp_path: Path) -> None:
    first_run_of_two_parts(tmp_path)
    cluster_embeddings_into(LOOSE, batch_at([0.5, 1.5], "day2"), tmp_path, 0.95, "m")
    ids = current(tmp_path)
    assert [ids[f"day1/{i}.png"] for i in range(7)] == [1, 1, 1, 1, 2, 2, 2]
    assert [ids["day2/0.png"], ids["day2/1.png"]] == [1, 1]
    assert events_of(tmp_path) == [(1, "created", 1, 0, 7), (2, "split_from", 2, 1, 3), (2, "joined", 1, 0, 2)]
    runs = read_table(tmp_path, "runs").set_index("run")
    assert runs.loc[2, ["split", "dissolved", "merged", "changed_ids", "assigned"]].tolist() == [1, 0, 0, 3, 9]
    assert runs.loc[2, "churn"] == 3 / 7
    clusters = read_table(tmp_path, "clusters").set_index("id")
    assert clusters.loc[[1, 2], "size"].tolist() == [6, 3]
    assert_rows_match_members(tmp_path)


def test_the_churn_budget_defers_a_split(tmp_path: Path) -> None:
    first_run_of_two_parts(tmp_path)
    strict = LOOSE.model_copy(update={"max_churn": 0.4})  # 0.4 x 7 = 2 images, the part has 3
    cluster_embeddings_into(strict, batch_at([0.5, 1.5], "day2"), tmp_path, 0.95, "m")
    assert set(current(tmp_path).values()) == {1}
    assert read_table(tmp_path, "runs")["split"].tolist() == [0, 0]


def test_a_cluster_that_falls_apart_is_dissolved_into_the_pool(tmp_path: Path) -> None:
    cluster_embeddings_into(LOOSE, batch_at([0, 20, 40], "day1"), tmp_path, 0.7, "m")  # cos 20 deg = 0.94
    cluster_embeddings_into(LOOSE, batch_at([0.5], "day2"), tmp_path, 0.99, "m")
    assert set(current(tmp_path).values()) == {0}
    assert (2, "dissolved", 1, 0, 3) in events_of(tmp_path)
    runs = read_table(tmp_path, "runs").set_index("run")
    assert runs.loc[2, ["dissolved", "changed_ids", "assigned", "churn"]].tolist() == [1, 3, 0, 1.0]
    clusters = read_table(tmp_path, "clusters").set_index("id")
    assert clusters.loc[1, "size"] == 0
    # The dissolved images wait in the pool: a later batch near them makes a cluster again, with a new id.
    cluster_embeddings_into(LOOSE, batch_at([19, 21], "day3"), tmp_path, 0.99, "m")
    ids = current(tmp_path)
    assert ids["day1/1.png"] == ids["day3/0.png"] == ids["day3/1.png"] == 2
    assert_rows_match_members(tmp_path)


def test_every_changed_id_has_its_event(tmp_path: Path) -> None:
    first_run_of_two_parts(tmp_path)
    before = current(tmp_path)
    cluster_embeddings_into(LOOSE, batch_at([0.5, 1.5], "day2"), tmp_path, 0.95, "m")
    after = current(tmp_path)
    changed = {path for path, cluster_id in before.items() if after[path] != cluster_id}
    events = pd.DataFrame(events_of(tmp_path), columns=["run", "kind", "cluster_id", "other_id", "images"])
    moves = events[(events["run"] == 2) & events["kind"].isin(["split_from", "dissolved", "merged_into"])]
    assert len(changed) == 3 and moves["cluster_id"].tolist() == [2] and moves["other_id"].tolist() == [1]


def test_the_review_page_suggests_merging_look_alike_clusters(tmp_path: Path) -> None:
    # Two groups 25 deg apart (23 deg between the nearest images: cos 0.921 < 0.95); their prototypes are
    # cos 25 deg = 0.906 alike, within MERGE_MARGIN (0.05) of the threshold.
    cluster_embeddings_into(LOOSE, batch_at([0, 1, 2, 25, 26, 27], "day1"), tmp_path, 0.95, "m")
    summary = json.loads((tmp_path / "runs" / "run-000001" / "clusters.json").read_text())
    assert summary["suggestions"] == [
        {
            "kind": "merge",
            "cluster_ids": [1, 2],
            "reason": "their prototypes are 0.906 alike (threshold 0.950)",
            "command": f"replearn clusters merge {tmp_path} 1 2",
        }
    ]
    report = (tmp_path / "runs" / "run-000001" / "report.html").read_text()
    assert "To review" in report and f"replearn clusters merge {tmp_path} 1 2" in report


def test_a_split_the_run_leaves_alone_is_suggested(tmp_path: Path) -> None:
    first_run_of_two_parts(tmp_path)
    strict = LOOSE.model_copy(update={"max_churn": 0.4})
    cluster_embeddings_into(strict, batch_at([0.5, 1.5], "day2"), tmp_path, 0.95, "m")
    summary = json.loads((tmp_path / "runs" / "run-000002" / "clusters.json").read_text())
    split = [s for s in summary["suggestions"] if s["kind"] == "split"]
    assert split == [
        {
            "kind": "split",
            "cluster_ids": [1],
            "reason": "this run found it in pieces: 3 of its members apart from the main part",
            "command": f"replearn clusters split {tmp_path} 1",
        }
    ]


def test_a_confirmed_cluster_is_never_split_and_takes_only_linked_images(tmp_path: Path) -> None:
    first_run_of_two_parts(tmp_path)
    confirm_clusters(tmp_path, [1])
    # 0.5 and 1.5 deg are linked to members at 0-3 deg; 21 deg is 18 deg from the nearest member
    # (cos 0.951 >= 0.95 would link it, so it sits at 21.5: 18.5 deg, cos 0.948): it stays out.
    cluster_embeddings_into(LOOSE, batch_at([0.5, 1.5, 21.5], "day2"), tmp_path, 0.95, "m")
    ids = current(tmp_path)
    assert [ids[f"day1/{i}.png"] for i in range(7)] == [1] * 7
    assert [ids[f"day2/{i}.png"] for i in range(3)] == [1, 1, 0]
    summary = json.loads((tmp_path / "runs" / "run-000003" / "clusters.json").read_text())
    assert summary["split"] == 0 and [s["command"] for s in summary["suggestions"]] == [
        f"replearn clusters split {tmp_path} 1"
    ]


def test_a_run_over_the_whole_catalogue_revises_without_new_images(tmp_path: Path) -> None:
    """What a migration ends with: at a stricter threshold (a new model's), the cluster is found in two parts."""
    first_run_of_two_parts(tmp_path)
    with catalogue_lock(tmp_path):
        result = revise_catalogue(load_catalogue(tmp_path), 0.95, LOOSE, tmp_path)
    assert (result.run, result.new_images, result.changed_ids) == (2, 0, 3)
    ids = current(tmp_path)
    assert [ids[f"day1/{i}.png"] for i in range(7)] == [1, 1, 1, 1, 2, 2, 2]
    assert events_of(tmp_path)[-1] == (2, "split_from", 2, 1, 3)
    assert_rows_match_members(tmp_path)


def test_runs_keep_the_promise_on_look_alike_classes(tmp_path: Path) -> None:
    """Pairs of look-alike classes (centres cos 0.92 apart, above the threshold) fed in eight shuffled batches:
    early batches mix pairs, later runs split and merge; each run's id changes stay within the budget and each
    has its event; sizes and sums stay their members'."""
    rng = np.random.default_rng(0)
    centres = np.eye(16)[np.repeat(np.arange(8), 2)] + 0.3 * np.eye(16)[np.tile([8, 9], 8)]
    labels = np.repeat(np.arange(16), 12)
    points = centres[labels] + 0.09 * rng.normal(size=(len(labels), 16))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    paths = [f"{label}/{i}.png" for i, label in enumerate(labels)]
    config = ClusterConfig(neighbors=8, max_churn=0.05)
    before: dict[str, int] = {}
    for part in np.array_split(rng.permutation(len(labels)), 8):
        batch = ImageBatch([paths[i] for i in part], [paths[i] for i in part], [paths[i] for i in part], points[part])
        result = cluster_embeddings_into(config, batch, tmp_path, 0.9, "m")
        after = followed(tmp_path)
        changed = {path for path, cluster_id in before.items() if cluster_id and after[path] != cluster_id}
        assigned = sum(1 for cluster_id in before.values() if cluster_id)
        assert result.changed_ids == len(changed) <= int(config.max_churn * assigned)
        events = pd.DataFrame(events_of(tmp_path), columns=["run", "kind", "cluster_id", "other_id", "images"])
        moves = events[(events["run"] == result.run) & events["kind"].isin(["split_from", "merged_into", "dissolved"])]
        named = set(moves["cluster_id"]) | set(moves["other_id"]) | {0}
        assert all(before[path] in named and after[path] in named | {before[path]} for path in changed)
        assert_rows_match_members(tmp_path)
        before = after
    runs = read_table(tmp_path, "runs")
    assert runs["split"].sum() >= 3 and runs["merged"].sum() >= 2  # the early batches' mixtures were revised


def followed(out: Path) -> dict[str, int]:
    """Every image's current cluster, merges followed."""
    table = current_assignments(out)
    return dict(zip(table["path"], follow_merges(table["cluster_id"].to_numpy(), merges(out)).tolist(), strict=True))
