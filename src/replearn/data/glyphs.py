"""The glyphs benchmark data: a thousand and more Unicode classes with 3 to 7 images each, from bundled fonts.

The chars data has 62 classes and 120 images a class; users' class folders are often the other way
round: thousands of classes (products, logos, icons, species) with a handful of images each. This
dataset has that shape without downloading anything: every Latin, Greek, Cyrillic, symbol and math
code point that at least MIN_FAMILIES typeface families really draw (the font's cmap maps it to an
outline that puts ink on the canvas: no tofu boxes) is a class, and each class gets 3 to 7 images,
one font each, taking the families in turn, so the images of a class are drawn by different
designers as class folders of drawings by different artists are.

File names are <family>_<font>_<n>.png, as in the chars data, so the default group pattern keeps
whole typeface families out of training. Code points that look the same in one font (Latin A, Greek
Alpha and Cyrillic A share an outline in DejaVu Sans) would be classes no model can tell apart, so a
code point whose rendering equals an earlier one's in its reference font is left out.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import numpy as np

from replearn.atomic import atomic_directory
from replearn.console import track
from replearn.data.chars import Jitter, _font, draws_ink, families_in_turn, render_glyph
from replearn.data.fonts import FontInfo, discover_fonts
from replearn.errors import UserError

log = logging.getLogger(__name__)

# The Unicode blocks the classes come from: Latin, Greek, Cyrillic, symbols and mathematics.
BLOCKS = (
    (0x0021, 0x007E),  # Basic Latin
    (0x00A1, 0x024F),  # Latin-1 Supplement, Latin Extended-A and -B
    (0x0370, 0x03FF),  # Greek and Coptic
    (0x0400, 0x052F),  # Cyrillic and its supplement
    (0x1E00, 0x1FFF),  # Latin Extended Additional, Greek Extended
    (0x2010, 0x205E),  # General Punctuation
    (0x20A0, 0x20CF),  # Currency Symbols
    (0x2100, 0x21FF),  # Letterlike Symbols, Number Forms, Arrows
    (0x2200, 0x23FF),  # Mathematical Operators, Miscellaneous Technical
    (0x2460, 0x27FF),  # Enclosed Alphanumerics ... Dingbats, Miscellaneous Mathematical Symbols-A, Arrows
    (0x2900, 0x2AFF),  # Supplemental Arrows-B, Miscellaneous Mathematical Symbols-B, Supplemental Operators
    (0x1D400, 0x1D7FF),  # Mathematical Alphanumeric Symbols
)
# Marks that only combine with a base, separators, controls and unassigned code points draw nothing alone.
SKIPPED_CATEGORIES = {"Mn", "Mc", "Me", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"}
MIN_FAMILIES = 3  # one train, one val and one test family per class, as the split needs
MIN_IMAGES, MAX_IMAGES = 3, 7
DEDUPE_PIXELS = 24  # the rendering size at which look-alike code points are compared


def candidate_characters() -> str:
    """Every code point of BLOCKS that draws something on its own.

    >>> "A" in candidate_characters() and "\\u0301" not in candidate_characters()  # a combining accent
    True
    """
    return "".join(
        chr(code)
        for low, high in BLOCKS
        for code in range(low, high + 1)
        if unicodedata.category(chr(code)) not in SKIPPED_CATEGORIES
    )


def glyph_class_name(char: str) -> str:
    """Folder name of a code point, distinct on case-insensitive file systems: u0041 for A, u1D400 for 𝐀.

    >>> glyph_class_name("A"), glyph_class_name("\\U0001D400")
    ('u0041', 'u1D400')
    """
    return f"u{ord(char):04X}"


def _outline_key(char: str, font: FontInfo) -> bytes:
    return bytes(_font(font.path, DEDUPE_PIXELS).getmask(char))


def fonts_per_glyph(fonts: list[FontInfo], size: int) -> dict[str, list[FontInfo]]:
    """For each code point drawn by MIN_FAMILIES families or more, its fonts, families in turn; look-alikes out.

    A code point's reference font is the first of its fonts; when its rendering there equals that of an
    earlier code point in the same font, it is a homoglyph and left out.
    """
    ordered = families_in_turn(fonts)
    table: dict[str, list[FontInfo]] = {}
    seen: set[tuple[Path, bytes]] = set()
    for char in candidate_characters():
        usable = [font for font in ordered if char in font.characters and draws_ink(char, font.path, size)]
        if len({font.family for font in usable}) < MIN_FAMILIES:
            continue
        key = (usable[0].path, _outline_key(char, usable[0]))
        if key in seen:
            continue
        seen.add(key)
        table[char] = usable
    return table


def images_of(char: str, usable: list[FontInfo], seed: int) -> list[FontInfo]:
    """The fonts of one class: a seeded count from MIN_IMAGES to MAX_IMAGES, families in turn from a seeded start.

    Families come in turn, so the first images span the most designs; the start rotates per class so
    that every font of a family gets its share.
    """
    rng = np.random.default_rng([seed, ord(char)])
    count = int(rng.integers(MIN_IMAGES, min(MAX_IMAGES, len(usable)) + 1))
    members: dict[str, list[FontInfo]] = {}
    for font in usable:
        members.setdefault(font.family, []).append(font)
    rotated = []
    for family_fonts in members.values():
        start = int(rng.integers(len(family_fonts)))
        rotated += family_fonts[start:] + family_fonts[:start]
    return families_in_turn(rotated)[:count]


def generate_glyphs(
    out_dir: Path,
    size: int,
    seed: int,
    max_classes: int | None = None,
    fonts: list[Path] | None = None,
    replace_fonts: bool = False,
    force: bool = False,
) -> dict[str, int]:
    """Write OUT/<class>/<family>_<font>_<n>.png, 3 to 7 images a class; returns images per class.

    Every code point that MIN_FAMILIES families draw is a class, in code point order, up to
    `max_classes`; image n of a class draws its n-th font with jitter seeded by (seed, code point, n),
    so the same seed always gives the same bytes.
    """
    font_list = discover_fonts(candidate_characters(), extra=fonts, replace=replace_fonts)
    if not font_list:
        raise UserError("no usable fonts found; pass --fonts with .ttf/.otf files or folders")
    table = fonts_per_glyph(font_list, size)
    chosen = list(table)[:max_classes]
    if len(chosen) < 2:
        raise UserError(
            f"only {len(chosen)} code points are drawn by {MIN_FAMILIES} font families; add fonts with --fonts"
        )
    plan = {char: images_of(char, table[char], seed) for char in chosen}
    log.info(
        "rendering %d glyph classes, %d images, from %d fonts of %d families",
        len(plan),
        sum(len(fonts) for fonts in plan.values()),
        len(font_list),
        len({font.family for font in font_list}),
    )
    jobs = [(char, n, font) for char, fonts in plan.items() for n, font in enumerate(fonts)]
    with atomic_directory(out_dir, replace=force) as staging:
        for char in plan:
            (staging / glyph_class_name(char)).mkdir()
        for char, n, font in track(jobs, len(jobs), "rendering glyphs"):
            rng = np.random.default_rng([seed, ord(char), n])
            image = render_glyph(char, font.path, size, Jitter.draw(rng), rng)
            image.save(staging / glyph_class_name(char) / f"{font.family}_{font.name}_{n:05d}.png", optimize=False)
    return {glyph_class_name(char): len(fonts) for char, fonts in plan.items()}
