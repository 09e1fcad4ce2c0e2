import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from replearn.artifacts.checkpoint import read_checkpoint
from replearn.cli import app
from replearn.config import Config, load_config
from replearn.data.splits import read_splits
from replearn.errors import UserError
from replearn.training import loop
from replearn.training.model import load_model
from replearn.training.train import train

TINY = [
    "preprocess.resize.size=32",
    "train.model.d_model=32",
    "train.model.heads=2",
    "train.model.layers=1",
    "train.model.embedding_dim=32",
    "train.classes_per_batch=6",
    "train.images_per_class=4",
    "train.warmup_iterations=2",
    "train.loader_workers=0",
    "train.batch_size_eval=128",
]


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def rows(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_few_iterations_reduce_the_loss_and_write_every_output(tiny_preprocessed: Path, tmp_path: Path) -> None:
    config = tiny_config("train.iterations=10", "train.checkpoint_every=5", "train.augmentations=[]")
    result = train(config, tiny_preprocessed, tmp_path / "run")

    log = rows(tmp_path / "run")
    assert [int(r["iteration"]) for r in log] == list(range(1, 11))
    losses = [float(r["loss"]) for r in log]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert [r["iteration"] for r in log if r["val_precision_at_1"]] == ["5", "10"]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["iterations"] == 10 and summary["global_batch_size"] == 24
    assert summary["iteration_rule"] == "fixed" and summary["seconds_per_iteration"] > 0
    assert summary["train_images"] == len(read_train(tiny_preprocessed))
    assert 0.0 <= summary["best_val_precision_at_1"] <= 1.0

    model, saved_config, classes = load_model(result.best_checkpoint)
    assert saved_config.train.model.d_model == 32 and not model.training
    assert classes == sorted(set(read_splits(tiny_preprocessed).query("subset == 'seen'")["label"]))
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 32)
    last = read_checkpoint(result.last_checkpoint)
    assert last["iteration"] == 10 and {"optimizer", "scheduler", "rng", "metrics"} <= last.keys()


def read_train(preprocessed: Path) -> list[str]:
    table = read_splits(preprocessed)
    return list(table[(table["subset"] == "seen") & (table["split"] == "train")]["path"])


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_weights(
    tiny_preprocessed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config("train.iterations=4", "train.checkpoint_every=2", "train.model.dropout=0.2")
    straight = train(config, tiny_preprocessed, tmp_path / "straight")

    save = loop.save_checkpoint

    def crash_after_first_checkpoint(path: Path, payload: dict) -> None:
        save(path, payload)
        raise Interrupted

    monkeypatch.setattr(loop, "save_checkpoint", crash_after_first_checkpoint)
    with pytest.raises(Interrupted):
        train(config, tiny_preprocessed, tmp_path / "resumed")
    monkeypatch.setattr(loop, "save_checkpoint", save)
    with pytest.raises(UserError, match="--resume"):
        train(config, tiny_preprocessed, tmp_path / "resumed")
    resumed = train(config, tiny_preprocessed, tmp_path / "resumed", resume=True)

    expected = read_checkpoint(straight.last_checkpoint)
    actual = read_checkpoint(resumed.last_checkpoint)
    assert actual["iteration"] == 4
    for key, value in expected["model"].items():
        assert torch.equal(value, actual["model"][key]), key
    assert [r["loss"] for r in rows(tmp_path / "resumed")] == [r["loss"] for r in rows(tmp_path / "straight")]
    assert resumed.summary["resumed_from"] == 2


def test_resume_refuses_a_changed_config(tiny_preprocessed: Path, tmp_path: Path) -> None:
    train(tiny_config("train.iterations=2", "train.augmentations=[]"), tiny_preprocessed, tmp_path / "run")
    changed = tiny_config("train.iterations=4", "train.augmentations=[]", "train.lr=0.1")
    with pytest.raises(UserError, match=r"config changed \(train\.lr: 0\.001 -> 0\.1\)"):
        train(changed, tiny_preprocessed, tmp_path / "run", resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        train(changed, tiny_preprocessed, tmp_path / "other", resume=True)
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        train(tiny_config("train.precision=fp16", "train.devices=cpu"), tiny_preprocessed, tmp_path / "fp16")


def test_cli_trains_with_options_and_refuses_to_overwrite(tiny_preprocessed: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = [arg for override in TINY for arg in ("--set", override)]
    out = tmp_path / "cli"
    command = [*args, "--set", "train.augmentations=[]", "train", str(tiny_preprocessed), str(out), "--iterations", "2"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file() and (out / "train_summary.json").is_file()
    assert read_checkpoint(out / "last.pt")["config"]["train"]["iterations"] == 2
    again = runner.invoke(app, command)
    assert again.exit_code == 1 and "already holds a training run" in str(again.exception)
    assert runner.invoke(app, [*command, "--force"]).exit_code == 0


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from replearn.training.loop import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"


@pytest.mark.parametrize(("major", "expected"), [(7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_precision_on_gpus_takes_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, major: int, expected: str
) -> None:
    """A V100 or T4 (7.x) emulates bf16, which is slower than fp16 with a scaler; the device asked about counts."""
    asked = []

    def properties(device: torch.device) -> SimpleNamespace:
        asked.append(device)
        return SimpleNamespace(major=major)

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    assert loop.resolve_precision("auto", torch.device("cuda", 1)) == expected
    assert asked == [torch.device("cuda", 1)]


def test_validation_p1_in_query_blocks_equals_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    from replearn.similarity import unit_rows
    from replearn.training import validation

    rng = np.random.default_rng(0)
    queries, gallery = unit_rows(rng.normal(size=(50, 8))), unit_rows(rng.normal(size=(30, 8)))
    query_labels, gallery_labels = np.arange(50) % 4, np.arange(30) % 4
    nearest = (queries @ gallery.T).argmax(axis=1)
    expected = float(np.mean(gallery_labels[nearest] == query_labels))
    monkeypatch.setattr(validation, "SEARCH_MEMORY_MB", 48 * 7 / 2**20)  # 7 queries a block
    assert validation.precision_at_1(queries, query_labels, gallery, gallery_labels) == expected


def test_validation_rows_are_capped_evenly_and_never_repeat() -> None:
    from replearn.training.validation import capped_rows

    assert capped_rows(5, 20_000).tolist() == [0, 1, 2, 3, 4]
    rows = capped_rows(100_003, 20_000)
    assert len(rows) == len(set(rows.tolist())) == 20_000 and rows[0] == 0 and rows[-1] == 100_002


def test_unset_iterations_follow_the_classes_and_the_run_records_why(tiny_preprocessed: Path, tmp_path: Path) -> None:
    """With train.iterations unset, iterations = classes x class_draws / P; the summary and checkpoint say so."""
    config = tiny_config("train.min_iterations=1", "train.class_draws=2", "train.augmentations=[]")
    assert config.train.iterations is None
    table = read_splits(tiny_preprocessed)
    classes = table[(table["subset"] == "seen") & (table["split"] == "train")]["label"].nunique()
    result = train(config, tiny_preprocessed, tmp_path / "run")
    expected = -(-classes * 2 // min(6, classes))
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert result.iterations == summary["iterations"] == expected == len(rows(tmp_path / "run"))
    assert summary["iteration_rule"] == "class_draws" and f"{classes} training classes" in summary["iteration_reason"]
    assert read_checkpoint(result.last_checkpoint)["config"]["train"]["iterations"] == expected
