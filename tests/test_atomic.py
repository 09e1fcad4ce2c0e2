import os
from pathlib import Path

import pytest

from replearn.atomic import atomic_directory, atomic_path, write_json_atomic


def test_atomic_file_has_the_usual_mode_and_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomic(target, {"b": 1, "a": 2})
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_directory_swaps_in_only_a_complete_folder(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target, replace=True) as staging:
        (staging / "b.txt").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
