"""HTML: visible text only (scripts, styles and other non-content dropped), split at h1..h6."""

from __future__ import annotations

import re
from pathlib import Path

from indexer.loaders.decode import decode_text
from indexer.loaders.structure import sections_from_headings, title_from
from indexer.schema import Document

DROP = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas", "button", "select"}
BLOCK = {"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "thead", "tbody", "section", "article",
         "aside", "header", "footer", "nav", "main", "blockquote", "pre", "figure", "figcaption", "form",
         "fieldset", "details", "summary", "hr", "address", "caption"}
HEADINGS = {f"h{i}": i for i in range(1, 7)}
_SPACE = re.compile(r"\s+")


class _Writer:
    """Accumulates text, collapsing whitespace and placing blank lines between blocks."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.at_line_start = True
        self.pending_break = False

    def _emit(self, s: str) -> None:
        self.parts.append(s)
        self.size += len(s)

    def block(self) -> None:
        if self.size:
            self.pending_break = True

    def newline(self) -> None:
        if self.size and not self.at_line_start:
            self._emit("\n")
            self.at_line_start = True

    def text(self, s: str, pre: bool = False) -> None:
        if not pre:
            s = _SPACE.sub(" ", s)
            if self.at_line_start or self.pending_break:
                s = s.lstrip()
        if not s:
            return
        if self.pending_break:
            self._emit("\n\n")
            self.pending_break = False
        self._emit(s)
        self.at_line_start = s.endswith("\n")

    def value(self) -> str:
        return "".join(self.parts)


def _walk(node, out: _Writer, markers: list, pre: bool = False) -> None:
    from bs4 import Comment, NavigableString, Tag
    from bs4.element import Declaration, Doctype, ProcessingInstruction

    for child in node.children:
        if isinstance(child, (Comment, Doctype, Declaration, ProcessingInstruction)):
            continue
        if isinstance(child, NavigableString):
            out.text(str(child), pre)
            continue
        if not isinstance(child, Tag):
            continue
        name = (child.name or "").lower()
        if name in DROP:
            continue
        if name in HEADINGS:
            title = _SPACE.sub(" ", child.get_text(" ")).strip()
            if title:
                out.block()
                if out.pending_break:
                    out._emit("\n\n")
                    out.pending_break = False
                markers.append((out.size, HEADINGS[name], title))
                out.text(title)
                out.block()
            continue
        if name == "br":
            out.newline()
        elif name in BLOCK:
            out.block()
            _walk(child, out, markers, pre or name == "pre")
            out.block()
        else:
            _walk(child, out, markers, pre)


def load_html(data: bytes, name: str) -> Document:
    """Extract visible text; headings become sections; title from <title> or the first h1."""
    from bs4 import BeautifulSoup

    raw, warnings = decode_text(data)
    soup = BeautifulSoup(raw, "html.parser")
    page_title = soup.title.get_text(" ", strip=True) if soup.title else ""
    out, markers = _Writer(), []
    _walk(soup, out, markers)
    text = out.value().rstrip() + "\n"
    if not text.strip():
        text = ""
    return Document(text=text, title=page_title or title_from(markers, Path(name).stem), file_type="html",
                    sections=sections_from_headings(text, markers) if text else [], warnings=warnings)
