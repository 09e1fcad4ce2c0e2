"""Pictures carried inside an HTML page as data URIs, under a byte budget.

A page that holds its pictures opens anywhere: from disk, mailed, or in the ZenML dashboard, which
shows an HTML artifact in a sandboxed frame where a relative link (`thumbs/x.jpg`) resolves to
nothing. The budget keeps such a page loadable: the dashboard fetches it whole, in one response.
"""

from __future__ import annotations

import base64
import binascii
import io
from html.parser import HTMLParser

from PIL import Image

JPEG_QUALITY = 85


def jpeg_data_uri(image: Image.Image, quality: int = JPEG_QUALITY) -> str:
    """`image` as a `data:image/jpeg;base64,...` URI.

    >>> jpeg_data_uri(Image.new("RGB", (2, 2))).startswith("data:image/jpeg;base64,/9j/")
    True
    """
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class PageImages:
    """Turns pictures into `<img>` tags until `max_bytes` of data URIs are spent; counts the ones left out.

    >>> images = PageImages(max_bytes=2000)
    >>> images.tag(Image.new("RGB", (8, 8)), "a black square") is not None
    True
    >>> images.tag(Image.effect_noise((64, 64), 100), "noise"), images.left_out
    (None, 1)
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.spent = 0
        self.left_out = 0

    def tag(self, image: Image.Image, alt: str) -> str | None:
        """An `<img>` holding `image`, or None when it would take the page over its budget."""
        uri = jpeg_data_uri(image)
        if self.spent + len(uri) > self.max_bytes:
            self.left_out += 1
            return None
        self.spent += len(uri)
        return f'<img src="{uri}" alt="{alt}">'


class _ImageCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            values = dict(attrs)
            self.found.append((values.get("alt") or "", values.get("src") or ""))


def embedded_images(page: str) -> list[tuple[str, Image.Image]]:
    """(alt text, decoded picture) of every `<img>` of `page` whose source is a base64 data URI, in page order.

    Raises ValueError when such a source does not decode to a picture.

    >>> page = f'<p><img src="{jpeg_data_uri(Image.new("RGB", (3, 2)))}" alt="tiny"></p>'
    >>> [(alt, image.size) for alt, image in embedded_images(page)]
    [('tiny', (3, 2))]
    """
    collector = _ImageCollector()
    collector.feed(page)
    images: list[tuple[str, Image.Image]] = []
    for alt, source in collector.found:
        header, comma, payload = source.partition(",")
        if not (header.startswith("data:image/") and header.endswith(";base64") and comma):
            continue
        try:
            image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
            image.load()
        except (binascii.Error, OSError) as error:
            raise ValueError(f"the picture '{alt}' does not decode: {error}") from error
        images.append((alt, image))
    return images
