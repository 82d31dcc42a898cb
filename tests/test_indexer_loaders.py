"""Loaders, chunk structure and the docs-folder scan (no model needed)."""

import os

import pytest

from indexer.loaders import LoadError, load_document
from indexer.scan import scan


def test_markdown_heading_paths_and_code_fences():
    text = b"Preamble.\n\n# Guide\n\nIntro.\n\n```\n# not a heading\n```\n\n## Setup\n\nSteps.\n\nLegacy\n------\n\nOld.\n\n# Other\n\nEnd.\n"
    doc = load_document(text, "g.md")
    assert doc.title == "Guide"
    assert [s.heading for s in doc.sections] == ["", "Guide", "Guide > Setup", "Guide > Legacy", "Other"]
    assert "# not a heading" in doc.text[doc.sections[1].start:doc.sections[1].end]
    # sections tile the document text exactly
    assert doc.sections[0].start == 0 and doc.sections[-1].end == len(doc.text)
    assert all(a.end == b.start for a, b in zip(doc.sections, doc.sections[1:]))


def test_rst_section_levels():
    doc = load_document(b"=====\nTitle\n=====\n\nIntro\n\nPart A\n------\n\na\n\nDeep\n~~~~\n\nd\n\nPart B\n------\n\nb\n", "x.rst")
    assert doc.title == "Title"
    assert [s.heading for s in doc.sections] == ["Title", "Title > Part A", "Title > Part A > Deep", "Title > Part B"]


def test_html_drops_scripts_styles_and_keeps_headings():
    html = (b"<html><head><title>Page</title><style>.x{color:red}</style><script>var secret=1;</script></head>"
            b"<body><h1>Main</h1><p>Hello <b>bold</b> world.</p><noscript>enable js</noscript>"
            b"<script>alert('tracking')</script><h2>Sub</h2><ul><li>one</li><li>two</li></ul></body></html>")
    doc = load_document(html, "p.html")
    assert doc.title == "Page"
    assert "secret" not in doc.text and "tracking" not in doc.text and "color" not in doc.text
    assert "enable js" not in doc.text
    assert "Hello bold world." in doc.text
    assert [s.heading for s in doc.sections] == ["Main", "Main > Sub"]
    assert doc.text[doc.sections[1].start:].startswith("Sub")


def _make_pdf(path, pages):
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    for text in pages:
        c.drawString(72, 750, text)
        c.showPage()
    c.save()


def test_pdf_pages_become_sections_with_page_numbers(tmp_path):
    _make_pdf(tmp_path / "a.pdf", ["first page about apples", "", "third page about pears"])
    doc = load_document((tmp_path / "a.pdf").read_bytes(), "a.pdf")
    assert [s.page for s in doc.sections] == [1, 3]
    assert "pears" in doc.text[doc.sections[1].start:doc.sections[1].end]
    with pytest.raises(LoadError, match="unreadable PDF"):
        load_document(b"%PDF-1.4 garbage", "broken.pdf")


def test_text_decoding_policy():
    doc = load_document("caf\u00e9 cr\u00e8me".encode("cp1252"), "latin.txt")
    assert doc.text == "caf\u00e9 cr\u00e8me" and "cp1252" in doc.warnings[0]
    assert load_document("\ufeffbom text".encode("utf-8"), "b.txt").text == "bom text"
    assert load_document("utf16 text".encode("utf-16"), "u.txt").text == "utf16 text"
    with pytest.raises(LoadError, match="binary"):
        load_document(b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50, "program.md")


def test_scan_reports_bad_entries(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "ok.md").write_text("# ok\n")
    (root / "image.png").write_bytes(b"\x89PNG")
    with open(root / "huge.txt", "wb") as f:  # sparse 50 MB file: over the limit, never read
        f.truncate(50 * 2**20)
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the root")
    os.symlink(outside, root / "escape.txt")
    os.symlink(tmp_path, root / "sub" / "up")            # folder outside the root
    os.symlink(root, root / "sub" / "loop")               # loop back to the root
    os.symlink(root / "missing.txt", root / "dangling.txt")
    os.symlink(root / "self1", root / "self2")
    os.symlink(root / "self2", root / "self1")            # a link cycle that cannot be resolved
    os.symlink(root / "ok.md", root / "sub" / "alias.md")  # a link inside the root is followed
    files, skipped = scan(root, max_file_mb=20)
    assert [f.rel for f in files] == ["ok.md", "sub/alias.md"]
    reasons = {s.rel: s.reason for s in skipped}
    assert reasons["image.png"].startswith("unsupported file type .png")
    assert reasons["huge.txt"].startswith("too large (50.0 MB")
    assert reasons["escape.txt"].startswith("link points outside the docs root")
    assert reasons["sub/up"].startswith("link points outside the docs root")
    assert "loop" in reasons["sub/loop"]
    assert reasons["dangling.txt"] == "broken symlink"
    assert reasons["self1"] == "symlink loop" and reasons["self2"] == "symlink loop"
