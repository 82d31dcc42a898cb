"""Heading markers -> sections with heading paths (shared by Markdown, reST and HTML)."""

from __future__ import annotations

import re

from indexer.schema import Section

Marker = tuple[int, int, str]
"""(character offset where the heading starts, level 1..6, heading text)."""

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RST_ADORN = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}[ \t]*$")


def _lines(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        out.append((pos, line.rstrip("\r\n")))
        pos += len(line)
    return out


def markdown_headings(text: str) -> list[Marker]:
    """ATX (`## Title`) and setext (`Title` over `===`/`---`) headings outside code fences."""
    markers: list[Marker] = []
    fence: str | None = None
    lines = _lines(text)
    for i, (pos, line) in enumerate(lines):
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)[0] * 3
            if fence is None:
                fence = mark
            elif mark == fence:
                fence = None
            continue
        if fence is not None:
            continue
        m = _ATX.match(line)
        if m and m.group(2).strip():
            markers.append((pos, len(m.group(1)), m.group(2).strip()))
            continue
        m = _SETEXT.match(line)
        if m and i > 0:
            prev_pos, prev = lines[i - 1]
            if prev.strip() and not _ATX.match(prev) and not prev.lstrip().startswith(("-", "*", ">", "|")) \
                    and (not markers or markers[-1][0] != prev_pos):
                markers.append((prev_pos, 1 if m.group(1)[0] == "=" else 2, prev.strip()))
    return markers


def rst_headings(text: str) -> list[Marker]:
    """reST section titles: a title underlined (optionally also overlined) by punctuation.

    Levels follow the order in which adornment styles first appear, as docutils does."""
    markers: list[Marker] = []
    styles: list[tuple[str, bool]] = []
    lines = _lines(text)
    i = 0
    while i < len(lines) - 1:
        pos, line = lines[i]
        over = _RST_ADORN.match(line)
        if over and i + 2 < len(lines) and lines[i + 1][1].strip() and lines[i + 2][1].strip() == line.strip():
            style, title, start, step = (line[0], True), lines[i + 1][1].strip(), pos, 3
        else:
            under = _RST_ADORN.match(lines[i + 1][1])
            if not (line.strip() and under and not _RST_ADORN.match(line)
                    and len(lines[i + 1][1].rstrip()) >= len(line.rstrip())):
                i += 1
                continue
            style, title, start, step = (lines[i + 1][1][0], False), line.strip(), pos, 2
        if style not in styles:
            styles.append(style)
        markers.append((start, min(styles.index(style) + 1, 6), title))
        i += step
    return markers


def sections_from_headings(text: str, markers: list[Marker]) -> list[Section]:
    """Split `text` at each heading; each section carries the path of enclosing headings."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    bounds = [m[0] for m in markers] + [len(text)]
    if not markers or markers[0][0] > 0:
        first_end = bounds[0]
        if text[:first_end].strip():
            sections.append(Section(0, first_end, ""))
    for (pos, level, title), end in zip(markers, bounds[1:]):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        sections.append(Section(pos, end, " > ".join(t for _, t in stack)))
    return sections


def title_from(markers: list[Marker], fallback: str) -> str:
    """The first top-level heading, else the first heading, else `fallback`."""
    for _, level, title in markers:
        if level == 1:
            return title
    return markers[0][2] if markers else fallback
