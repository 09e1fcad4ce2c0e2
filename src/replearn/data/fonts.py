"""Fonts that ship inside the packages replearn depends on, which characters each can really draw, and its family.

The chars demo data needs many typefaces without downloading any. matplotlib alone
ships DejaVu, STIX and Computer Modern; other packages add more. A font is only used
for a character when its cmap maps the character to a real glyph that draws ink, and
symbol fonts (whose letters are not letters) are left out entirely.

The family matters for evaluation: DejaVuSans-Bold is the same design as DejaVuSans, so a
model tested on the one after training on the other has not met a new typeface. The family
comes from the font's own name table, so a split can keep whole families out of training.
"""

from __future__ import annotations

import logging
import re
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError

log = logging.getLogger(__name__)

FONT_SUFFIXES = {".ttf", ".otf"}
# Families whose cmap maps ASCII code points to symbols rather than letters.
SYMBOL_FAMILY = re.compile(r"sym|symbol|dingbat|wingding|webding|emoji|cmex|cmsy|nonuni|mathtexgyre|lastresort", re.I)
# Weight, slant and width words that some families spell into their family name ("HK Grotesk Light").
STYLE_WORDS = re.compile(
    r"\b(?:(?:extra|ultra|semi|demi)[ -]?(?:light|bold)|thin|hairline|light|book|regular|normal|medium|"
    r"semibold|demibold|bold|black|heavy|italic|oblique|slanted|condensed|narrow|expanded|extended)\b",
    re.I,
)
# Knuth's Computer Modern gives each style of one design its own font name: cm + shape + design size.
# cmr, cmb, cmbx, cmti, cmmi and cmsl are the Roman design; cmss the sans and cmtt the typewriter designs.
COMPUTER_MODERN = re.compile(r"^cm(?P<shape>[a-z]+)\d+$")
COMPUTER_MODERN_DESIGNS = {"ss": "ComputerModernSans", "tt": "ComputerModernTypewriter"}
# A requirement of a package's metadata ("numpy>=1.26; extra == 'dev'"): its name, and whether an extra asks it.
REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
EXTRA_MARKER = re.compile(r";.*\bextra\s*==")


@dataclass(frozen=True)
class FontInfo:
    """A usable font file: its path, a file-name-safe name, its typographic family, and the characters it draws."""

    path: Path
    name: str
    characters: frozenset[str]
    family: str


def site_package_dirs() -> list[Path]:
    """The interpreter's package directories, where installed packages keep their fonts."""
    paths = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    return sorted(path for path in paths if path.is_dir())


def dependency_font_files(root: str = "replearn") -> list[Path]:
    """The font files of `root`'s runtime dependencies, followed through theirs, but not through any extra.

    So the demo data is drawn by the fonts of the packages replearn needs, whatever else the
    environment holds: the fiftyone extra's ETA ships Arial, which `make test` installs and a user's
    `make install` does not. When replearn is not installed as a package (run from a source tree),
    every font in site-packages counts, as it did before.
    """
    names, seen, found = [root], set[str](), set[Path]()
    while names:
        name = re.sub(r"[-_.]+", "-", names.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name == root:
                return find_font_files(site_package_dirs())
            continue
        found.update(
            Path(str(dist.locate_file(file))).resolve()
            for file in dist.files or []
            if file.suffix.lower() in FONT_SUFFIXES
        )
        names += [
            match[0] for r in dist.requires or [] if not EXTRA_MARKER.search(r) and (match := REQUIREMENT_NAME.match(r))
        ]
    return sorted(path for path in found if path.is_file())


def find_font_files(roots: list[Path]) -> list[Path]:
    """Every .ttf/.otf file below the roots (or the roots themselves), sorted so results are stable."""
    found: set[Path] = set()
    for root in roots:
        if root.is_file() and root.suffix.lower() in FONT_SUFFIXES:
            found.add(root.resolve())
        elif root.is_dir():
            found.update(p.resolve() for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())
    return sorted(found)


def safe_font_name(path: Path) -> str:
    """A file-name-safe name without underscores, so `<font>_<n>.png` splits back on the first '_'."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", path.stem).strip("-") or "font"


def family_name(font: TTFont, path: Path) -> str:
    """The font's typographic family as a file-name-safe name without '-' or '_': DejaVu Sans Bold -> DejaVuSans.

    From the name table: the typographic family (nameID 16), else the family (nameID 1), else the
    file stem; then weight, slant and width words are dropped, and Computer Modern's per-style
    names map to their design.

    >>> family_name(TTFont(), Path("HKGrotesk-SemiBoldItalic.otf"))
    'HKGrotesk'
    >>> family_name(TTFont(), Path("cmti10.ttf"))
    'ComputerModernRoman'
    >>> family_name(TTFont(), Path("TimesNewRoman-BoldItalic.ttf"))  # Roman names a design, not a style
    'TimesNewRoman'
    """
    names = font.get("name")
    recorded = (names.getDebugName(name_id) for name_id in (16, 1)) if names is not None else ()
    raw = next((value for value in recorded if value), path.stem)
    knuth = COMPUTER_MODERN.match(raw)
    if knuth:
        shape = knuth["shape"]
        return next((name for key, name in COMPUTER_MODERN_DESIGNS.items() if key in shape), "ComputerModernRoman")
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", raw)  # HKGrotesk-SemiBoldItalic: a stem spells words in camel case
    family = re.sub(r"[^A-Za-z0-9]+", "", STYLE_WORDS.sub(" ", words))
    return family or re.sub(r"[^A-Za-z0-9]+", "", raw) or "font"


def _is_symbol_font(font: TTFont, path: Path) -> bool:
    if SYMBOL_FAMILY.search(path.stem):
        return True
    cmap = font.get("cmap")
    return cmap is not None and any(t.platformID == 3 and t.platEncID == 0 for t in cmap.tables)


def _drawable(font: TTFont, wanted: str) -> set[str]:
    """Characters that the cmap maps to a glyph other than .notdef and that has an outline."""
    cmap = font.getBestCmap() or {}
    glyph_set = font.getGlyphSet()
    drawable = set()
    for char in wanted:
        glyph_name = cmap.get(ord(char))
        if glyph_name is None or glyph_name == ".notdef" or glyph_name not in glyph_set:
            continue
        if "glyf" in font:
            glyph = font["glyf"][glyph_name]
            if glyph.numberOfContours == 0:
                continue
        drawable.add(char)
    return drawable


def inspect_font(path: Path, wanted: str) -> FontInfo | None:
    """FontInfo for a usable text font, or None for a symbol font or a file fontTools cannot read."""
    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            if _is_symbol_font(font, path):
                log.debug("skipping symbol font %s", path)
                return None
            characters = _drawable(font, wanted)
            family = family_name(font, path)
    except (TTLibError, OSError, KeyError, AssertionError) as error:
        log.debug("skipping unreadable font %s: %s", path, error)
        return None
    if not characters:
        return None
    return FontInfo(path=path, name=safe_font_name(path), characters=frozenset(characters), family=family)


def discover_fonts(wanted: str, extra: list[Path] | None = None, replace: bool = False) -> list[FontInfo]:
    """Usable fonts of replearn's dependencies (unless `replace`) plus `extra`, one per distinct name."""
    files = ([] if replace else dependency_font_files()) + find_font_files(list(extra or []))
    fonts: dict[str, FontInfo] = {}
    for path in sorted(set(files)):
        info = inspect_font(path, wanted)
        if info is not None and info.name not in fonts:
            fonts[info.name] = info
    return sorted(fonts.values(), key=lambda f: f.name)
