"""Checks of a written report (used by the tests and the demo's test): the HTML parses with every element
closed, every embedded image decodes, and nothing outside the file is referenced."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
URL_ATTRS = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background", "xlink:href"}
EXTERNAL = re.compile(r"(https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]*)", re.IGNORECASE)
DATA_PNG = "data:image/png;base64,"


class StrictParser(HTMLParser):
    """Records every problem: an end tag that closes nothing open, an element left open, an external URL in an
    attribute or in CSS, a ``<script>``/``<link>``/``<iframe>``; keeps the ``<img>`` sources and the headings."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[int, int]]] = []
        self.problems: list[str] = []
        self.images: list[str] = []
        self.headings: list[tuple[str, str]] = []  # (tag, text)
        self.order: list[str] = []  # "table" / "h2:<text>" in document order
        self._heading: list[str] | None = None
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.problems.append(f"<{tag}> at line {self.getpos()[0]}: the report must need nothing outside itself")
        for name, value in attrs:
            value = value or ""
            if name in URL_ATTRS and not value.startswith(("#", DATA_PNG)):
                self.problems.append(f"<{tag} {name}={value[:60]!r}>: not an in-page link or embedded PNG")
            if name == "style":
                self._css(value)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag == "table":
            self.order.append("table")
        if tag in ("h1", "h2", "h3"):
            self._heading = []
        if tag == "style":
            self._in_style = True
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            top = self.stack[-1] if self.stack else None
            opened = f"<{top[0]}> of line {top[1][0]}" if top else "nothing"
            self.problems.append(f"</{tag}> at line {self.getpos()[0]} does not close the open {opened}")
            if any(t == tag for t, _ in self.stack):  # resynchronise on the matching element
                while self.stack and self.stack[-1][0] != tag:
                    self.stack.pop()
                self.stack.pop()
            return
        self.stack.pop()
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            text = "".join(self._heading).strip()
            self.headings.append((tag, text))
            if tag == "h2":
                self.order.append(f"h2:{text}")
            self._heading = None
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._in_style:
            self._css(data)

    def _css(self, text: str) -> None:
        for url in CSS_URL.findall(text):
            if not url.startswith("data:"):
                self.problems.append(f"CSS url({url[:60]}): not embedded")
        if EXTERNAL.search(text):
            self.problems.append(f"CSS names a URL: {EXTERNAL.search(text).group(0)!r}")
        if "@import" in text:
            self.problems.append("CSS @import: the report must need nothing outside itself")

    def close(self):
        super().close()
        for tag, (line, _) in self.stack:
            self.problems.append(f"<{tag}> opened at line {line} is never closed")


def decode_png(uri: str):
    """The RGB(A) array of a ``data:image/png;base64`` URI; ValueError if it is not a decodable PNG."""
    import io

    from PIL import Image

    if not uri.startswith(DATA_PNG):
        raise ValueError(f"not an embedded PNG: {uri[:40]!r}")
    im = Image.open(io.BytesIO(base64.b64decode(uri[len(DATA_PNG):], validate=True)))
    im.load()
    if im.format != "PNG" or min(im.size) < 1:
        raise ValueError(f"embedded image is {im.format} {im.size}")
    return im


def parse_report(text: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(text)
    parser.close()
    return parser


def check_report(path: str | Path) -> list[str]:
    """Every problem found in the report at ``path`` (empty when it is well-formed and self-contained)."""
    text = Path(path).read_text(encoding="utf-8")
    parser = parse_report(text)
    problems = list(parser.problems)
    if not text.lstrip().lower().startswith("<!doctype html>"):
        problems.append("no <!DOCTYPE html>")
    for i, src in enumerate(parser.images):
        try:
            decode_png(src)
        except Exception as e:  # noqa: BLE001 - every undecodable image is a problem to report
            problems.append(f"image {i} does not decode: {e}")
    return problems
