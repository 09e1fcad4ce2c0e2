"""The loop of docs/cluster.md, end to end through the `replearn` CLI, on tiny chars data.

Train a model on class folders, cluster an inbox of classes it never saw, name and confirm a cluster,
promote it into the class folders, validate, preprocess and train again, evaluate the new model, and
point it at the same OUT so that it migrates the catalogue. Every command is the one a user types, run
in this process with ./params.yaml holding tiny settings (32 px, a tiny model, a few iterations), so
the model learns next to nothing: the test is about what moves between the stages, not accuracy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from console_script import replearn
from replearn.catalogue.promotion import PROVENANCE_FILE
from replearn.catalogue.read import read_table
from replearn.catalogue.store import load_catalogue
from replearn.data.chars import generate_chars
from replearn.data.splits import read_splits
from replearn.embedding.onnx import read_metadata
from tiny_params import TINY_STAGE_PARAMS

pytestmark = pytest.mark.slow

NEW_CLASSES = ["digit_7", "upper_Q", "lower_m"]  # in the inbox only: the first model never sees them
# The promoted class. Its stable number (data/splits.py, split seed 0) is 0.53, above unseen_fraction 0.2,
# so the split makes it a seen class, which training learns, rather than a held-out one.
CLASS = "new_glyphs"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cluster_name_promote_retrain_evaluate_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> str:
        code, text = replearn(monkeypatch, capsys, *args)
        assert code == 0, f"replearn {' '.join(args)} exited {code}: {text}"
        return text

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(TINY_STAGE_PARAMS))
    raw, inbox = Path("data/raw"), Path("data/inbox")
    generate_chars(raw, per_class=6, size=32, seed=0)
    generate_chars(tmp_path / "rendered", per_class=6, size=32, seed=1)
    for name in NEW_CLASSES:
        shutil.rmtree(raw / name)
        shutil.move(tmp_path / "rendered" / name, inbox / name)

    # The first model: its threshold is given, as an evaluation of a 3-iteration model has nothing to tell.
    run("validate", str(raw), "outputs/validate")
    run("preprocess", str(raw), "outputs/preprocessed", "--only", "outputs/validate/good_files.csv")
    run("train", "outputs/preprocessed", "outputs/train-1")
    old_model = Path("outputs/model-1.onnx")
    run("export", "outputs/train-1/best.pt", str(old_model), "--images", "outputs/preprocessed", "--threshold", "0.9")
    assert not set(NEW_CLASSES) & set(read_metadata(old_model).classes)

    run("cluster", str(old_model), str(inbox), "out")
    clusters = read_table(Path("out"), "clusters").set_index("id")
    assert len(clusters) >= 1 and set(clusters["state"]) == {"automatic"}
    chosen = int(clusters["size"].idxmax())
    run("clusters", "confirm", "out", str(chosen))
    run("clusters", "name", "out", str(chosen), CLASS)
    members = read_table(Path("out"), "images").query("cluster_id == @chosen")
    before = snapshot(raw)

    text = run("clusters", "promote", "out", str(raw))
    assert CLASS in text and PROVENANCE_FILE in text
    promoted = read_table(Path("out"), "events").query("kind == 'promoted'")
    assert promoted[["cluster_id", "name", "images"]].values.tolist() == [[chosen, CLASS, len(members)]]
    promotion_run = int(promoted["run"].iloc[0])
    class_dir = raw / CLASS
    copied = sorted(p.name for p in class_dir.iterdir() if p.name != PROVENANCE_FILE)
    # Inbox files of different classes share names (one per font), so some arrive renamed: compare contents.
    assert sorted(sha256(class_dir / name) for name in copied) == sorted(sha256(inbox / p) for p in members["path"])
    assert all(snapshot(raw)[path] == content for path, content in before.items())  # nothing of the user's changed
    with (class_dir / PROVENANCE_FILE).open() as handle:
        provenance = pd.DataFrame(list(csv.DictReader(handle)))
    assert sorted(provenance["file"]) == copied
    assert set(provenance["catalogue"]) == {str((tmp_path / "out" / "catalogue").resolve())}
    assert set(provenance["cluster_id"]) == {str(chosen)}
    assert set(provenance["run"]) == {str(promotion_run)}
    assert set(provenance["model_id"]) == {f"sha256:{sha256(old_model)}"}
    for row in provenance.itertuples():
        assert sha256(class_dir / row.file) == row.sha256 == sha256(inbox / row.key.split("@")[0])

    # The next round trains on the data that now holds the promoted class, and evaluates the new model.
    run("validate", str(raw), "outputs/validate")
    good = pd.read_csv("outputs/validate/good_files.csv")["path"]
    assert sorted(p for p in good if p.startswith(f"{CLASS}/")) == [f"{CLASS}/{name}" for name in copied]
    run("preprocess", str(raw), "outputs/preprocessed", "--only", "outputs/validate/good_files.csv")
    splits = read_splits("outputs/preprocessed").query("label == @CLASS")
    assert len(splits) == len(copied) and set(splits["subset"]) == {"seen"} and "train" in set(splits["split"])
    run("train", "outputs/preprocessed", "outputs/train-2")
    run("evaluate", "outputs/train-2/best.pt", "outputs/preprocessed", "outputs/evaluate")
    metrics = json.loads(Path("outputs/evaluate/metrics.json").read_text())
    for key in ("seen/precision_at_1", "seen/map_at_r", "unseen/precision_at_1", "seen/nmi"):
        assert 0.0 <= metrics[key] <= 1.0, key
    per_class = pd.read_csv("outputs/evaluate/per_class.csv")
    assert CLASS in set(per_class.query("subset == 'seen'")["class"])  # its test images were queries
    new_model = Path("outputs/model-2.onnx")
    run(
        "export",
        "outputs/train-2/best.pt",
        str(new_model),
        "--images",
        "outputs/preprocessed",
        "--threshold-file",
        "outputs/evaluate/threshold.json",
    )
    assert CLASS in read_metadata(new_model).classes

    # The new model on the same OUT migrates the catalogue: the person's cluster keeps its id, name and state.
    text = run("cluster", str(new_model), str(inbox), "out")
    assert f"migrated the catalogue (run {promotion_run + 1})" in text
    catalogue = load_catalogue(Path("out"))
    assert catalogue.model_id == f"sha256:{sha256(new_model)}" and catalogue.embedding_dim == 8
    after = read_table(Path("out"), "clusters").set_index("id")
    assert after.loc[chosen, ["name", "state"]].tolist() == [CLASS, "confirmed"]
    now = read_table(Path("out"), "images").query("cluster_id == @chosen")
    assert set(members["key"]) <= set(now["key"])  # a confirmed cluster only gains images that pass the threshold
    assert chosen in set(read_table(Path("out"), "events").query("kind == 'migrated'")["cluster_id"])

    # Promoting again copies only what joined the cluster since (in the new model's space), then nothing.
    joined = now[~now["key"].isin(members["key"])]
    run("clusters", "promote", "out", str(raw))
    added = sorted(set(class_dir.iterdir()) - {class_dir / name for name in copied} - {class_dir / PROVENANCE_FILE})
    assert sorted(sha256(path) for path in added) == sorted(sha256(inbox / path) for path in joined["path"])
    with (class_dir / PROVENANCE_FILE).open() as handle:
        rows = list(csv.DictReader(handle))[len(copied) :]
    assert {row["model_id"] for row in rows} <= {f"sha256:{sha256(new_model)}"} and len(rows) == len(added)
    data, manifest = snapshot(raw), Path("out/catalogue/manifest.json").read_bytes()
    run("clusters", "promote", "out", str(raw))
    assert snapshot(raw) == data and Path("out/catalogue/manifest.json").read_bytes() == manifest
