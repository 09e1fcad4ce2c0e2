import os
from pathlib import Path

from replearn.data.version import data_version


def test_version_follows_files_and_names_the_dvc_hash(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    assert data_version(raw) == "missing"
    (raw / "a").mkdir(parents=True)
    image = raw / "a" / "1.png"
    image.write_bytes(b"one")
    first = data_version(raw)
    assert first.startswith("stat:") and data_version(raw) == first
    os.utime(image, ns=(1, 1))
    touched = data_version(raw)
    assert touched != first
    (tmp_path / "raw.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  path: raw\n")
    assert data_version(raw) == f"dvc:0123abcd.dir,{touched}"
