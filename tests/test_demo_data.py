import hashlib
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image

from replearn.data.chars import CHARACTERS, class_name, generate_chars
from replearn.data.digits import generate_digits
from replearn.data.fonts import (
    dependency_font_files,
    discover_fonts,
    find_font_files,
    inspect_font,
    site_package_dirs,
)


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


def test_chars_file_names_are_family_then_font(chars_dir: Path) -> None:
    family_of = {font.name: font.family for font in discover_fonts(CHARACTERS)}
    pairs = {tuple(path.name.split("_")[:2]) for path in chars_dir.rglob("*.png")}
    assert all(family == family_of[font] for family, font in pairs)
    # 8 images per class take one font from each of the 8 families in turn.
    assert len({family for family, _ in pairs}) == 8
    assert ("DejaVuSans", "DejaVuSans") in pairs


def test_family_of_every_bundled_font_comes_from_its_name_table() -> None:
    """nameID 16, else 1, with style words dropped; Computer Modern's per-style names are one design."""
    family_of = {font.name: font.family for font in discover_fonts(CHARACTERS)}
    expected = {
        "DejaVuSans-BoldOblique": "DejaVuSans",
        "DejaVuSansMono-Bold": "DejaVuSansMono",  # nameID 1 "DejaVu Sans Mono", no nameID 16
        "DejaVuSerif-Italic": "DejaVuSerif",
        "HKGrotesk-LightItalic": "HKGrotesk",  # nameID 16 "HK Grotesk", nameID 1 "HK Grotesk Light Italic"
        "HKGrotesk-Bold": "HKGrotesk",
        "STIXGeneralBolIta": "STIXGeneral",
        "cmr10": "ComputerModernRoman",
        "cmb10": "ComputerModernRoman",
        "cmti10": "ComputerModernRoman",
        "cmss10": "ComputerModernSans",
        "cmtt10": "ComputerModernTypewriter",
    }
    assert {name: family_of[name] for name in expected} == expected
    assert len(set(family_of.values())) == 8


def _dejavu_copy(tmp_path: Path, name: str) -> tuple[Path, TTFont]:
    source = next(p for p in find_font_files(site_package_dirs()) if p.name == "DejaVuSans.ttf")
    return tmp_path / name, TTFont(source)


def test_family_prefers_the_typographic_family_and_falls_back_to_the_file_stem(tmp_path: Path) -> None:
    path, font = _dejavu_copy(tmp_path, "Renamed-Bold.ttf")
    font["name"].setName("Alpha Display", 16, 3, 1, 0x409)
    font["name"].setName("Beta Condensed", 1, 3, 1, 0x409)
    font.save(path)
    assert inspect_font(path, "a").family == "AlphaDisplay"

    font["name"].removeNames(nameID=16)
    font.save(path)
    assert inspect_font(path, "a").family == "Beta"

    path, font = _dejavu_copy(tmp_path, "Nameless-SemiBoldItalic.ttf")
    del font["name"]
    font.save(path)
    assert inspect_font(path, "a").family == "Nameless"


def test_chars_is_deterministic_by_seed(tmp_path: Path, chars_dir: Path) -> None:
    again = tmp_path / "again"
    generate_chars(again, per_class=8, size=32, seed=0)
    assert tree_digest(again) == tree_digest(chars_dir)
    other = tmp_path / "other"
    generate_chars(other, per_class=8, size=32, seed=1)
    assert tree_digest(other) != tree_digest(chars_dir)


def test_case_stays_visible(chars_dir: Path) -> None:
    """Lower-case o is drawn shorter than upper-case O: fewer rows hold ink (darker than halfway to the paper)."""

    def ink_rows(path: Path) -> int:
        pixels = np.asarray(Image.open(path), dtype=np.float32)
        ink = pixels < (pixels.min() + np.median(pixels)) / 2
        return int(ink.any(axis=1).sum())

    def height(folder: str) -> float:
        return float(np.mean([ink_rows(p) for p in (chars_dir / folder).glob("*.png")]))

    assert height("lower_o") < 0.85 * height("upper_O")


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
    assert {p.name.split("_")[1] for p in (out / "digit_7").glob("*.png")} == {"DigitsOnly", "DejaVuSans"}
    assert {p.name.split("_")[1] for p in (out / class_name("A")).glob("*.png")} == {"DejaVuSans"}


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


def test_glyphs_are_classes_of_3_to_7_images_by_3_families_that_really_draw_them(tmp_path: Path) -> None:
    from replearn.data.glyphs import MAX_IMAGES, MIN_FAMILIES, MIN_IMAGES, candidate_characters, generate_glyphs

    counts = generate_glyphs(tmp_path / "glyphs", size=24, seed=0, max_classes=40)
    assert len(counts) == 40 and all(MIN_IMAGES <= count <= MAX_IMAGES for count in counts.values())
    fonts = {font.name: font for font in discover_fonts(candidate_characters())}
    for folder in (tmp_path / "glyphs").iterdir():
        char = chr(int(folder.name[1:], 16))
        names = [path.name.split("_") for path in sorted(folder.glob("*.png"))]
        assert len(names) == counts[folder.name]
        assert len({family for family, _, _ in names}) >= min(len(names), MIN_FAMILIES)
        for family, font, _ in names:
            assert fonts[font].family == family
            with TTFont(fonts[font].path, lazy=True) as opened:  # the cmap has it: no tofu box
                assert ord(char) in opened.getBestCmap()
    again = generate_glyphs(tmp_path / "again", size=24, seed=0, max_classes=40)
    assert again == counts and tree_digest(tmp_path / "glyphs") == tree_digest(tmp_path / "again")


def test_glyphs_leave_out_look_alikes_and_marks() -> None:
    from replearn.data.glyphs import candidate_characters, fonts_per_glyph

    table = fonts_per_glyph(discover_fonts(candidate_characters()), 32)
    assert len(table) >= 1_000
    assert "A" in table and "\u0391" not in table and "\u0410" not in table  # Greek and Cyrillic capital A
    assert "\u0416" in table and "\u03b6" in table and "\u2211" in table  # Cyrillic Zhe, Greek zeta, n-ary sum
    assert not any(unicodedata.category(char).startswith("M") for char in table)


def test_the_demo_fonts_are_those_of_replearns_dependencies_never_of_an_extra() -> None:
    fonts = dependency_font_files()
    assert any(path.name == "DejaVuSans.ttf" for path in fonts)  # matplotlib's, a runtime dependency
    arial = [path for path in find_font_files(site_package_dirs()) if path.name == "Arial.ttf"]
    if not arial:
        pytest.skip("the fiftyone extra (whose ETA ships Arial.ttf) is not installed")
    assert not set(arial) & set(fonts)
