"""The chars demo dataset: 62 alphanumeric classes rendered from fonts that ship in installed packages.

Each glyph sits on a fixed baseline at a fixed size, so case stays visible (o/O, s/S differ
in height), and seeded jitter (position, rotation, scale, stroke, blur, noise, contrast)
makes every image different. File names are <family>_<font>_<n>.png: the default split groups
by the part before the first '_', so whole typeface families (DejaVuSans with its bold and
oblique) stay out of training and the test measures how the model generalises to new designs;
a pattern on the second part splits by font file instead.
"""

from __future__ import annotations

import itertools
import logging
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from replearn.atomic import atomic_directory
from replearn.console import track
from replearn.data.fonts import FontInfo, discover_fonts
from replearn.errors import UserError

log = logging.getLogger(__name__)

CHARACTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase


def class_name(char: str) -> str:
    """Folder name for a character, distinct on case-insensitive file systems: digit_0, upper_A, lower_a."""
    if char.isdigit():
        return f"digit_{char}"
    return f"upper_{char}" if char.isupper() else f"lower_{char}"


@dataclass(frozen=True)
class Jitter:
    """The random variation of one rendered image."""

    dx: float
    dy: float
    angle: float
    scale: float
    stroke: int
    blur: float
    noise: float
    ink: int
    paper: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Jitter:
        return cls(
            dx=float(rng.uniform(-0.06, 0.06)),
            dy=float(rng.uniform(-0.05, 0.05)),
            angle=float(rng.uniform(-8.0, 8.0)),
            scale=float(rng.uniform(0.92, 1.08)),
            stroke=int(rng.random() < 0.25),
            blur=float(rng.uniform(0.0, 0.9)),
            noise=float(rng.uniform(0.0, 12.0)),
            ink=int(rng.integers(0, 90)),
            paper=int(rng.integers(170, 256)),
        )


@lru_cache(maxsize=512)
def _font(path: Path, pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), pixels)


def render_glyph(char: str, font_path: Path, size: int, jitter: Jitter, rng: np.random.Generator) -> Image.Image:
    """One grayscale image of `char`: drawn on a baseline at 62% of the height, then jittered."""
    font = _font(font_path, max(4, round(size * 0.5 * jitter.scale)))
    image = Image.new("L", (size, size), jitter.paper)
    draw = ImageDraw.Draw(image)
    width = font.getlength(char)
    x = (size - width) / 2 + jitter.dx * size
    baseline = size * (0.62 + jitter.dy)
    draw.text(
        (x, baseline), char, fill=jitter.ink, font=font, anchor="ls", stroke_width=jitter.stroke, stroke_fill=jitter.ink
    )
    image = image.rotate(jitter.angle, resample=Image.Resampling.BICUBIC, fillcolor=jitter.paper)
    if jitter.blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(jitter.blur))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, jitter.noise, (size, size))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def draws_ink(char: str, font_path: Path, size: int) -> bool:
    """Whether the font really puts ink on the canvas for `char` (catches empty glyphs the cmap hides)."""
    font = _font(font_path, max(4, size // 2))
    bbox = font.getmask(char).getbbox()
    return bbox is not None and bbox[2] - bbox[0] > 0 and bbox[3] - bbox[1] > 0


def families_in_turn(fonts: list[FontInfo]) -> list[FontInfo]:
    """The fonts reordered so that each family gives one font in turn: the first n cover the most families.

    Image n of a class uses font n (modulo the count), so a small --per-class still spans many
    designs, and a split by family has groups to split.

    >>> fonts = [FontInfo(Path(name), name, frozenset(), name[:4]) for name in ("SansA", "SansB", "Serif")]
    >>> [font.name for font in families_in_turn(fonts)]
    ['SansA', 'Serif', 'SansB']
    """
    members: dict[str, list[FontInfo]] = {}
    for font in fonts:
        members.setdefault(font.family, []).append(font)
    return [font for turn in itertools.zip_longest(*members.values()) for font in turn if font is not None]


def fonts_per_character(fonts: list[FontInfo], size: int) -> dict[str, list[FontInfo]]:
    """For each character, the fonts that draw it, families in turn; a character no font draws is an error."""
    ordered = families_in_turn(fonts)
    table = {
        char: [f for f in ordered if char in f.characters and draws_ink(char, f.path, size)] for char in CHARACTERS
    }
    missing = [char for char, usable in table.items() if not usable]
    if missing:
        raise UserError(f"no usable font draws {''.join(missing)!r}; add fonts with --fonts")
    return table


def generate_chars(
    out_dir: Path,
    per_class: int,
    size: int,
    seed: int,
    fonts: list[Path] | None = None,
    replace_fonts: bool = False,
    force: bool = False,
) -> dict[str, int]:
    """Write OUT/<class>/<family>_<font>_<n>.png for the 62 classes; returns images per class.

    Image n of a class uses the class's fonts in turn and a random stream seeded by
    (seed, class, n), so the same seed always gives the same bytes.
    """
    font_list = discover_fonts(CHARACTERS, extra=fonts, replace=replace_fonts)
    if not font_list:
        raise UserError("no usable fonts found; pass --fonts with .ttf/.otf files or folders")
    table = fonts_per_character(font_list, size)
    log.info("rendering %d classes x %d images from %d fonts", len(CHARACTERS), per_class, len(font_list))
    jobs = [(index, char, n) for index, char in enumerate(CHARACTERS) for n in range(per_class)]
    with atomic_directory(out_dir, replace=force) as staging:
        for char in CHARACTERS:
            (staging / class_name(char)).mkdir()
        for index, char, n in track(jobs, len(jobs), "rendering chars"):
            usable = table[char]
            font = usable[n % len(usable)]
            rng = np.random.default_rng([seed, index, n])
            image = render_glyph(char, font.path, size, Jitter.draw(rng), rng)
            image.save(staging / class_name(char) / f"{font.family}_{font.name}_{n:05d}.png", optimize=False)
    return {class_name(char): per_class for char in CHARACTERS}
