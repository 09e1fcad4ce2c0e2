import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replearn.data.chars import CHARACTERS, class_name, generate_chars
from replearn.data.digits import generate_digits
from replearn.data.fonts import discover_fonts, find_font_files, inspect_font, site_package_dirs


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_chars_has_62_case_safe_classes_and_the_requested_count(chars_dir: Path) -> None:
    folders = sorted(p.name for p in chars_dir.iterdir())
    assert len(folders) == 62
    assert len({name.casefold() for name in folders}) == 62
    assert {"digit_0", "upper_A", "lower_a", "upper_Z", "lower_z"} <= set(folders)
    for folder in chars_dir.iterdir():
        images = list(folder.glob("*.png"))
        assert len(images) == 8
        with Image.open(images[0]) as image:
            assert image.size == (32, 32)


def test_chars_file_names_start_with_the_font(chars_dir: Path) -> None:
    fonts = {path.name.split("_", 1)[0] for path in chars_dir.rglob("*.png")}
    assert len(fonts) >= 8
    assert "DejaVuSans" in fonts


def test_chars_is_deterministic_by_seed(tmp_path: Path, chars_dir: Path) -> None:
    again = tmp_path / "again"
    generate_chars(again, per_class=8, size=32, seed=0)
    assert tree_digest(again) == tree_digest(chars_dir)
    other = tmp_path / "other"
    generate_chars(other, per_class=8, size=32, seed=1)
    assert tree_digest(other) != tree_digest(chars_dir)


def test_case_stays_visible(chars_dir: Path) -> None:
    """Lower-case o is drawn smaller than upper-case O: the ink covers fewer pixels on average."""

    def ink(folder: str) -> float:
        return float(np.mean([(np.asarray(Image.open(p)) < 128).sum() for p in (chars_dir / folder).glob("*.png")]))

    assert ink("lower_o") < ink("upper_O")


def test_a_font_without_some_glyphs_is_used_only_for_the_glyphs_it_has(tmp_path: Path) -> None:
    """A font that lacks letters (a digits-only subset) is skipped for them, not drawn as .notdef boxes."""
    from fontTools import subset

    source = next(p for p in find_font_files(site_package_dirs()) if p.name == "DejaVuSans.ttf")
    digits_only = tmp_path / "fonts" / "DigitsOnly.ttf"
    digits_only.parent.mkdir()
    options = subset.Options()
    options.notdef_outline = True
    font = subset.load_font(str(source), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="0123456789")
    subsetter.subset(font)
    subset.save_font(font, str(digits_only), options)

    info = inspect_font(digits_only, CHARACTERS)
    assert info is not None and info.characters == frozenset("0123456789")

    out = tmp_path / "chars"
    generate_chars(out, per_class=3, size=32, seed=0, fonts=[digits_only, source], replace_fonts=True)
    assert {p.name.split("_")[0] for p in (out / "digit_7").glob("*.png")} == {"DigitsOnly", "DejaVuSans"}
    assert {p.name.split("_")[0] for p in (out / class_name("A")).glob("*.png")} == {"DejaVuSans"}


def test_symbol_fonts_are_left_out() -> None:
    names = {font.name for font in discover_fonts(CHARACTERS)}
    assert not any(name.startswith(("cmsy", "cmex", "STIXSize", "LastResort")) for name in names)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "chars"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_chars(out, per_class=1, size=32, seed=0)
    assert (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".chars.*"))


def test_digits_are_the_1797_sklearn_scans(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    counts = generate_digits(out, size=32)
    assert len(counts) == 10
    assert sum(counts.values()) == 1797
    assert sum(1 for _ in out.rglob("*.png")) == 1797
    with Image.open(next(out.rglob("*.png"))) as image:
        assert image.size == (32, 32)
    shutil.rmtree(out)
