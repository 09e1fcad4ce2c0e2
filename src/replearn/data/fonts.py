"""Fonts that ship inside installed Python packages, and which characters each can really draw.

The chars demo data needs many typefaces without downloading any. matplotlib alone
ships DejaVu, STIX and Computer Modern; other packages add more. A font is only used
for a character when its cmap maps the character to a real glyph that draws ink, and
symbol fonts (whose letters are not letters) are left out entirely.
"""

from __future__ import annotations

import logging
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError

log = logging.getLogger(__name__)

FONT_SUFFIXES = {".ttf", ".otf"}
# Families whose cmap maps ASCII code points to symbols rather than letters.
SYMBOL_FAMILY = re.compile(r"sym|symbol|dingbat|wingding|webding|emoji|cmex|cmsy|nonuni|mathtexgyre|lastresort", re.I)


@dataclass(frozen=True)
class FontInfo:
    """A usable font file: its path, a file-name-safe name, and the characters it draws."""

    path: Path
    name: str
    characters: frozenset[str]


def site_package_dirs() -> list[Path]:
    """The interpreter's package directories, where installed packages keep their fonts."""
    paths = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    return sorted(path for path in paths if path.is_dir())


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
    except (TTLibError, OSError, KeyError, AssertionError) as error:
        log.debug("skipping unreadable font %s: %s", path, error)
        return None
    if not characters:
        return None
    return FontInfo(path=path, name=safe_font_name(path), characters=frozenset(characters))


def discover_fonts(wanted: str, extra: list[Path] | None = None, replace: bool = False) -> list[FontInfo]:
    """Usable fonts from site-packages (unless `replace`) plus `extra`, one per distinct name."""
    roots = ([] if replace else site_package_dirs()) + list(extra or [])
    fonts: dict[str, FontInfo] = {}
    for path in find_font_files(roots):
        info = inspect_font(path, wanted)
        if info is not None and info.name not in fonts:
            fonts[info.name] = info
    return sorted(fonts.values(), key=lambda f: f.name)
