"""A person's corrections of the catalogue, on tiny catalogues built by real runs, with values checked by hand.

Embeddings are exact unit vectors (and one mix), so every size, sum, cohesion and similarity is
arithmetic: a cluster of 4 x e0 and 3 x e1 has the sum (4, 3), the cohesion 5 / 7.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalogue_checks import assert_rows_match_members
from console_script import replearn
from replearn.catalogue.corrections import (
    confirm_clusters,
    merge_clusters,
    move_images,
    name_cluster,
    reject_images,
    split_cluster,
    undo_last,
)
from replearn.catalogue.lineage import cluster_history
from replearn.catalogue.read import list_clusters, merges, read_table, show_cluster
from replearn.catalogue.store import catalogue_lock, load_catalogue
from replearn.clustering.cluster import ClusterRun, ImageBatch, cluster_embeddings_into
from replearn.clustering.methods import find_groups
from replearn.config import ClusterConfig
from replearn.errors import UserError

DIM = 16
CONFIG = ClusterConfig(min_size=3, method="components")  # components: the clusters follow from the links alone
THRESHOLD = 0.8
E = np.eye(DIM)
MIX = 0.85 * E[3] + np.sqrt(1 - 0.85**2) * E[4]  # 0.85 to e3: linked at 0.8, apart at 0.9


def batch(prefix: str, groups: dict[str, tuple[np.ndarray, int]]) -> ImageBatch:
    """`count` images of `vector` per group, named <prefix>/<group>/<i>.png."""
    paths = [f"{prefix}/{group}/{i}.png" for group, (_, count) in groups.items() for i in range(count)]
    vectors = [vector for vector, count in groups.values() for _ in range(count)]
    return ImageBatch(
        paths=paths,
        sha256=[f"sha-{path}" for path in paths],
        sources=[f"/nowhere/{path}" for path in paths],
        embeddings=np.array(vectors, dtype=np.float32),
    )


def cluster_run(out: Path, images: ImageBatch) -> ClusterRun:
    return cluster_embeddings_into(CONFIG, images, out, THRESHOLD, "model-a")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Run 1: cluster 1 = 4 x e0 (a), 2 = 3 x e1 (b), 3 = 3 x e2 (c); d/0 (e5) unclustered, in the pool."""
    cluster_run(tmp_path, batch("day1", {"a": (E[0], 4), "b": (E[1], 3), "c": (E[2], 3), "d": (E[5], 1)}))
    return tmp_path


def clusters(out: Path) -> pd.DataFrame:
    return read_table(out, "clusters", embeddings=True).set_index("id")


def cluster_of(out: Path) -> dict[str, int]:
    images = read_table(out, "images")
    return dict(zip(images["path"], images["cluster_id"], strict=True))


def person_events(out: Path) -> list[tuple[int, str, int, int, int]]:
    events = read_table(out, "events")
    person = events[events["actor"] == "person"]
    return [tuple(row) for row in person[["run", "kind", "cluster_id", "other_id", "images"]].itertuples(False)]


def test_list_shows_the_clusters_not_merged_and_their_state(out: Path) -> None:
    listed = list_clusters(out)
    assert listed["id"].tolist() == [1, 2, 3] and listed["size"].tolist() == [4, 3, 3]
    assert set(listed["state"]) == {"automatic"} and listed["cohesion"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    merge_clusters(out, [2, 3])
    assert list_clusters(out)["id"].tolist() == [1, 2]


def test_show_lists_every_member_with_its_similarity(out: Path) -> None:
    view = show_cluster(out, 1)
    assert view.cluster["size"] == 4 and view.cluster["state"] == "automatic" and view.merged == []
    assert view.members["path"].tolist() == [f"day1/a/{i}.png" for i in range(4)]
    assert view.members["similarity"].tolist() == pytest.approx([1.0] * 4)
    merge_clusters(out, [2, 3])
    merged = show_cluster(out, 2)
    assert merged.merged == [3] and len(merged.members) == 6  # its own 3 and the 3 of cluster 3


def test_name_confirms_the_cluster_and_nothing_else(out: Path) -> None:
    correction = name_cluster(out, 2, "  bees ")
    assert correction.run == 2 and [e.kind for e in correction.events] == ["named", "confirmed"]
    table = clusters(out)
    assert table.loc[2, ["state", "name", "size", "changed_run"]].tolist() == ["confirmed", "bees", 3, 2]
    assert table.loc[[1, 3], "state"].tolist() == ["automatic", "automatic"]
    assert load_catalogue(out).run == 2 and cluster_of(out)["day1/b/0.png"] == 2  # members untouched
    assert person_events(out) == [(2, "named", 2, 0, 0), (2, "confirmed", 2, 0, 0)]
    name_cluster(out, 2, "wasps")
    assert cluster_history(out, 2)["what"].tolist() == [
        "cluster 2 created with 3 images",
        "cluster 2 named 'bees'",
        "cluster 2 confirmed",
        "cluster 2 named 'wasps'",
    ]


def test_confirm_confirms_each_cluster_once(out: Path) -> None:
    assert [(e.kind, e.cluster_id) for e in confirm_clusters(out, [1, 3]).events] == [
        ("confirmed", 1),
        ("confirmed", 3),
    ]
    manifest = (out / "catalogue" / "manifest.json").read_bytes()
    assert confirm_clusters(out, [3, 1]).run is None  # already confirmed: no transaction
    assert (out / "catalogue" / "manifest.json").read_bytes() == manifest
    assert clusters(out)["state"].tolist() == ["confirmed", "automatic", "confirmed"]


def test_merge_keeps_the_first_id_and_its_prototype_covers_both(out: Path) -> None:
    correction = merge_clusters(out, [1, 2])
    assert [(e.kind, e.cluster_id, e.other_id, e.images) for e in correction.events] == [
        ("merged_into", 2, 1, 3),
        ("confirmed", 1, 0, 0),
        ("confirmed", 2, 0, 0),
    ]
    table = clusters(out)
    assert table.loc[2, "merged_into"] == 1 and merges(out) == {2: 1}
    assert cluster_of(out)["day1/b/0.png"] == 2  # images keep their stored id; readers follow merged_into
    assert table.loc[1, "size"] == 7 and np.asarray(table.loc[1, "sum"])[:2].tolist() == [4.0, 3.0]
    assert table.loc[1, "cohesion"] == pytest.approx(5 / 7)
    assert len(table.loc[1, "exemplars"]) == 7
    # The nearest-prototype index follows: e1 finds cluster 1 (prototype (0.8, 0.6)), no longer cluster 2.
    assert load_catalogue(out).nearest_clusters(E[[1, 2]].astype(np.float32), nprobe=1).tolist() == [1, 3]
    assert_rows_match_members(out)


def test_split_re_clusters_the_members_at_a_higher_threshold(tmp_path: Path) -> None:
    cluster_run(tmp_path, batch("day1", {"e3": (E[3], 4), "mix": (MIX, 3)}))  # linked at 0.8: one cluster of 7
    assert clusters(tmp_path)["size"].tolist() == [7]
    with pytest.raises(UserError, match="does not split at threshold 0.800"):
        split_cluster(tmp_path, 1, find_groups=find_groups, threshold=0.8, config=CONFIG)
    correction = split_cluster(tmp_path, 1, find_groups=find_groups, config=CONFIG)  # at (1 + 0.8) / 2 = 0.9
    assert [(e.kind, e.cluster_id, e.other_id, e.images) for e in correction.events] == [
        ("split_from", 2, 1, 3),
        ("confirmed", 1, 0, 0),
    ]
    ids = cluster_of(tmp_path)
    assert {p: c for p, c in ids.items() if "mix" in p} == {f"day1/mix/{i}.png": 2 for i in range(3)}
    table = clusters(tmp_path)
    assert table["size"].tolist() == [4, 3] and table["cohesion"].tolist() == pytest.approx([1.0, 1.0])
    assert table["state"].tolist() == ["confirmed", "confirmed"] and load_catalogue(tmp_path).next_cluster_id == 3
    assert read_table(tmp_path, "images").set_index("path").loc["day1/mix/0.png", "similarity"] == pytest.approx(1.0)
    assert_rows_match_members(tmp_path)


def test_split_with_images_takes_that_part_off(out: Path) -> None:
    correction = split_cluster(out, 1, images=["day1/a/0.png", "day1/a/1.png@sha-day1/a/1.png"], config=CONFIG)
    assert [(e.kind, e.cluster_id, e.other_id, e.images) for e in correction.events][0] == ("split_from", 4, 1, 2)
    assert clusters(out).loc[[1, 4], "size"].tolist() == [2, 2]
    assert cluster_of(out)["day1/a/0.png"] == 4 and cluster_of(out)["day1/a/2.png"] == 1
    with pytest.raises(UserError, match="not in cluster 1"):
        split_cluster(out, 1, images=["day1/b/0.png"], config=CONFIG)
    with pytest.raises(UserError, match="all 2 images of cluster 1"):
        split_cluster(out, 1, images=["day1/a/2.png", "day1/a/3.png"], config=CONFIG)


def test_move_takes_images_from_a_cluster_or_from_unclustered(out: Path) -> None:
    correction = move_images(out, 2, ["day1/a/0.png", "day1/d/0.png"])
    assert [(e.kind, e.cluster_id, e.other_id, e.images) for e in correction.events] == [
        ("moved", 2, 0, 1),
        ("moved", 2, 1, 1),
        ("confirmed", 1, 0, 0),
        ("confirmed", 2, 0, 0),
    ]
    table = clusters(out)
    assert table.loc[[1, 2], "size"].tolist() == [3, 5]
    assert np.asarray(table.loc[2, "sum"])[[0, 1, 5]].tolist() == [1.0, 3.0, 1.0]
    assert table.loc[2, "cohesion"] == pytest.approx(np.sqrt(11) / 5)
    images = read_table(out, "images").set_index("path")
    assert images.loc["day1/a/0.png", ["cluster_id", "changed_run"]].tolist() == [2, 2]
    assert images.loc["day1/a/0.png", "similarity"] == pytest.approx(1 / np.sqrt(11))
    assert load_catalogue(out).pool.size == 0  # d/0 left the pool
    with pytest.raises(UserError, match="in cluster 2 already"):
        move_images(out, 2, ["day1/a/0.png"])
    assert_rows_match_members(out)


def test_reject_sends_images_to_the_pool_and_records_where_from(out: Path) -> None:
    merge_clusters(out, [2, 3])
    correction = reject_images(out, ["day1/c/0.png", "day1/b/0.png"])
    assert [(e.kind, e.cluster_id, e.images) for e in correction.events] == [("rejected", 2, 2)]
    assert clusters(out).loc[[2, 3], "size"].tolist() == [4, 2]  # 2 keeps b/1, b/2 and c's 1, 2
    catalogue = load_catalogue(out)
    pool = catalogue.image_rows(catalogue.pool).column("path").to_pylist()
    assert pool[0] == "day1/d/0.png" and sorted(pool[1:]) == ["day1/b/0.png", "day1/c/0.png"]  # newest last
    rejected = dict(zip(pool, catalogue.rejected_from(catalogue.pool), strict=True))
    assert rejected == {"day1/d/0.png": set(), "day1/c/0.png": {2, 3}, "day1/b/0.png": {2}}  # c/0 was stored in 3
    assert cluster_of(out)["day1/c/0.png"] == 0
    with pytest.raises(UserError, match="is unclustered: there is no cluster to reject it from"):
        reject_images(out, ["day1/c/0.png"])
    assert_rows_match_members(out)


def test_history_follows_merges_and_splits(out: Path) -> None:
    merge_clusters(out, [2, 3])
    split_cluster(out, 2, images=["day1/c/0.png", "day1/c/1.png", "day1/c/2.png"], config=CONFIG)
    history = cluster_history(out, 3)  # cluster 3 was merged into 2, and a part of 2 became 4
    assert history["what"].tolist() == [
        "cluster 2 created with 3 images",
        "cluster 3 created with 3 images",
        "cluster 3 (3 images) merged into cluster 2",
        "cluster 2 confirmed",
        "cluster 3 confirmed",
        "cluster 4 split from cluster 2 with 3 images",
    ]
    assert history["actor"].tolist() == ["run", "run"] + ["person"] * 4
    with pytest.raises(UserError, match="there is no cluster 9"):
        cluster_history(out, 9)


def test_undo_restores_the_state_before_the_last_transaction_as_a_new_one(out: Path) -> None:
    name_cluster(out, 1, "ays")
    second = cluster_run(out, batch("day2", {"g": (E[6], 3)}))
    assert second.run == 3 and cluster_of(out)["day2/g/0.png"] == 4

    undone = undo_last(out)
    assert undone.run == 4 and [(e.kind, e.cluster_id, e.other_id) for e in undone.events] == [("undone", 4, 3)]
    catalogue = load_catalogue(out)
    assert catalogue.run == 4 and catalogue.next_cluster_id == 5  # the counters go on
    assert "day2/g/0.png" not in cluster_of(out) and clusters(out).index.tolist() == [1, 2, 3]
    assert clusters(out).loc[1, "name"] == "ays"  # the correction before the run stays
    again = cluster_run(out, batch("day2", {"g": (E[6], 3)}))  # the undone batch is new again ...
    assert again.run == 5 and cluster_of(out)["day2/g/0.png"] == 5  # ... and id 4 is never issued twice

    undo_last(out)  # undoes run 5
    redone = undo_last(out)  # one level: a second undo undoes the undo
    assert [(e.kind, e.other_id) for e in redone.events] == [("undone", 6)]
    assert cluster_of(out)["day2/g/0.png"] == 5 and load_catalogue(out).run == 7
    assert read_table(out, "runs")["run"].tolist() == [1, 3, 5]  # the runs table lists the runs that happened


def test_undoing_the_first_run_leaves_an_empty_catalogue_that_runs_fill_again(tmp_path: Path) -> None:
    cluster_run(tmp_path, batch("day1", {"a": (E[0], 3)}))
    undo_last(tmp_path)
    assert read_table(tmp_path, "images").empty and list(read_table(tmp_path, "rejections").columns) == [
        "digest",
        "clusters",
        "run",
    ]
    with pytest.raises(UserError, match="holds no clustered images yet"):
        name_cluster(tmp_path, 1, "ays")
    assert cluster_run(tmp_path, batch("day1", {"a": (E[0], 3)})).run == 3
    assert set(cluster_of(tmp_path).values()) == {2}  # id 1 went with the undone run, and is not issued again


def test_undo_of_a_correction_puts_names_members_and_rejections_back(out: Path) -> None:
    reject_images(out, ["day1/b/0.png"])
    undo_last(out)
    assert cluster_of(out)["day1/b/0.png"] == 2 and clusters(out).loc[2, ["size", "state"]].tolist() == [3, "automatic"]
    catalogue = load_catalogue(out)
    assert catalogue.rejected_from(catalogue.image_rows(catalogue.pool).column("digest").to_numpy()) == [frozenset()]
    assert [kind for _, kind, *_ in person_events(out)] == ["rejected", "confirmed", "undone"]


def test_the_undo_point_survives_compaction(out: Path) -> None:
    for day in range(2, 6):  # four more runs: the level-0 segments are merged after them
        cluster_run(out, batch(f"day{day}", {"a": (E[0], 1)}))
    catalogue = load_catalogue(out)
    assert catalogue.images.segments[0].level == 1 and catalogue.undo is not None
    undo_state = catalogue.undo["state"]
    named = {s["file"] for segments in undo_state["tables"].values() for s in segments} | {undo_state["pool"]}
    assert all((catalogue.directory / file).is_file() for file in named)  # compaction deleted none of them
    undo_last(out)
    assert "day5/a/0.png" not in cluster_of(out) and cluster_of(out)["day4/a/0.png"] == 1


def test_a_format2_catalogue_without_rejections_or_undo_point_reads(out: Path) -> None:
    manifest_path = out / "catalogue" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["tables"]["rejections"], manifest["undo"]
    manifest_path.write_text(json.dumps(manifest))
    catalogue = load_catalogue(out)
    assert catalogue.rejected_from(catalogue.pool) == [frozenset()] and catalogue.undo is None
    with pytest.raises(UserError, match="nothing to undo"):
        undo_last(out)
    reject_images(out, ["day1/a/0.png"])
    assert len(read_table(out, "rejections")) == 1


def test_scenario_corrections_survive_three_scheduled_runs(tmp_path: Path) -> None:
    """Name, merge, split, move and reject; then three runs: none undone, the rejected image stays out."""
    out = tmp_path
    cluster_run(out, batch("day1", {"m": (E[3], 4), "mix": (MIX, 3), "a": (E[0], 4), "b": (E[1], 3), "c": (E[2], 3)}))
    assert clusters(out)["size"].tolist() == [7, 4, 3, 3]  # 1: e3 and mix, 2: a, 3: b, 4: c

    name_cluster(out, 2, "ays")
    merge_clusters(out, [3, 4])  # a person says b and c are one
    split_cluster(out, 1, find_groups=find_groups, config=CONFIG)  # mix splits off as 5
    move_images(out, 2, ["day1/c/0.png"])
    reject_images(out, ["day1/b/0.png"])
    before = cluster_of(out)

    cluster_run(out, batch("day2", {"b": (E[1], 3)}))  # next to the rejected b/0, in the pool
    cluster_run(out, batch("day3", {"mix": (MIX, 3), "a": (E[0], 3)}))
    cluster_run(out, batch("day4", {"g": (E[6], 3), "b": (E[1], 1)}))

    after = cluster_of(out)
    assert {path: after[path] for path in before} == before  # no correction undone, b/0.png still out
    assert after["day1/b/0.png"] == 0 and after["day1/c/0.png"] == 2
    assert {after[f"day2/b/{i}.png"] for i in range(3)} == {3} and after["day4/b/0.png"] == 3
    assert {after[f"day3/mix/{i}.png"] for i in range(3)} == {5} and {after[f"day3/a/{i}.png"] for i in range(3)} == {2}
    assert {after[f"day4/g/{i}.png"] for i in range(3)} == {6}  # a new id after every one issued
    table = clusters(out)
    assert table.loc[2, "name"] == "ays" and table.loc[4, "merged_into"] == 3
    assert table.loc[[1, 2, 3, 4, 5], "state"].tolist() == ["confirmed"] * 5 and table.loc[6, "state"] == "automatic"
    assert table.loc[3, "size"] == 2 + 2 + 3 + 1  # b/1, b/2, c/1, c/2, day2's three, day4's one
    assert_rows_match_members(out)

    history = cluster_history(out, 3)
    assert list(zip(history["run"], history["what"], strict=True)) == [
        (1, "cluster 3 created with 3 images"),
        (1, "cluster 4 created with 3 images"),
        (3, "cluster 4 (3 images) merged into cluster 3"),
        (3, "cluster 3 confirmed"),
        (3, "cluster 4 confirmed"),
        (5, "1 images moved to cluster 2 from cluster 3"),
        (6, "1 images rejected from cluster 3"),
        (7, "3 images joined cluster 3"),
        (9, "1 images joined cluster 3"),
    ]
    assert cluster_history(out, 5)["what"].tolist() == [
        "cluster 1 created with 7 images",
        "cluster 5 split from cluster 1 with 3 images",
        "cluster 1 confirmed",
        "3 images joined cluster 5",
    ]


# The CLI: exit codes and error lines.


@pytest.fixture
def cli(out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.chdir(out)  # no params.yaml here: the defaults, and OUT is "."
    return lambda *args: replearn(monkeypatch, capsys, *args)


def test_cli_commands_print_what_they_did(cli, out: Path) -> None:
    code, text = cli("clusters", "list", ".")
    assert code == 0 and "1 automatic 4 1.0" in text
    code, text = cli("clusters", "show", ".", "2")
    assert code == 0 and text.startswith("cluster 2, automatic, 3 images") and "day1/b/0.png 1.0000 2" in text
    assert cli("clusters", "name", ".", "2", "bees") == (
        0,
        "correction 2: cluster 2 named 'bees' correction 2: cluster 2 confirmed",
    )
    assert cli("clusters", "confirm", ".", "2") == (0, "nothing to change: the catalogue is as asked")
    assert cli("clusters", "merge", ".", "2", "3") == (
        0,
        "correction 3: cluster 3 (3 images) merged into cluster 2 correction 3: cluster 3 confirmed",
    )
    (out / "part.txt").write_text("day1/a/0.png\n\nday1/a/1.png\n")
    code, text = cli("clusters", "split", ".", "1", "--images", "part.txt")
    assert code == 0 and text.startswith("correction 4: cluster 4 split from cluster 1 with 2 images")
    code, text = cli("--set", "cluster.method=components", "clusters", "split", ".", "1")
    assert code == 1 and "cluster 1 does not split at threshold 0.900" in text
    code, text = cli("clusters", "move", ".", "--to", "4", "day1/a/2.png")
    assert code == 0 and text.startswith("correction 5: 1 images moved to cluster 4 from cluster 1")
    code, text = cli("clusters", "reject", ".", "day1/a/3.png")
    assert code == 0 and text.startswith("correction 6: 1 images rejected from cluster 1")
    code, text = cli("clusters", "history", ".", "4")
    assert code == 0 and "person cluster 4 split from cluster 1 with 2 images" in text
    assert cli("clusters", "undo", ".") == (0, "correction 7: run or correction 6 undone, which changed cluster 1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("name", ".", "9", "x"), "error: there is no cluster 9 in . (ids run from 1 to 3;"),
        (("name", ".", "2", " "), "error: a cluster's name cannot be empty"),
        (("merge", ".", "2"), "error: merge takes two or more different cluster ids, not 2"),
        (("merge", ".", "2", "2"), "error: merge takes two or more different cluster ids, not 2 2"),
        (
            ("move", ".", "--to", "1", "nothere.png"),
            "error: 1 image(s) are not in the catalogue in ., e.g. 'nothere.png'",
        ),
        (("reject", ".", "day1/d/0.png"), "error: day1/d/0.png@sha-day1/d/0.png is unclustered"),
        (("split", ".", "1", "--images", "missing.txt"), "error: missing.txt is not a file"),
        (("show", ".", "7"), "error: there is no cluster 7 in ."),
    ],
)
def test_cli_bad_ids_and_images_exit_1_with_one_line(cli, args: tuple[str, ...], message: str) -> None:
    code, text = cli("clusters", *args)
    assert code == 1 and text.startswith(message), text


def test_cli_a_merged_id_and_usage_errors(cli) -> None:
    cli("clusters", "merge", ".", "2", "3")
    assert cli("clusters", "name", ".", "3", "x") == (
        1,
        "error: cluster 3 was merged into cluster 2; act on that one",
    )
    code, _ = cli("clusters", "name", ".", "0", "x")
    assert code == 2  # an id below 1 is a usage error
    code, text = cli("clusters", "list", "empty")
    assert code == 1 and "holds no cluster catalogue yet" in text


def test_cli_a_correction_while_a_run_holds_the_lock_is_refused(cli, out: Path) -> None:
    with catalogue_lock(out):
        code, text = cli("clusters", "name", ".", "1", "x")
    assert code == 1 and text.startswith("error: another process (pid ")
    assert "a `replearn cluster` run or a `replearn clusters` correction, is writing to ." in text
    assert pd.isna(clusters(out).loc[1, "name"])
