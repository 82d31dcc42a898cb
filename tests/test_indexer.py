"""Incremental, atomic index builds with a tiny random embedding model (fast)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from indexer import IncompatibleIndex, IndexConfig, IndexLockedError, build_index, open_index
from indexer import embed as embed_mod
from indexer.store import BuildLock, list_generations
from indexer_tiny import tiny_model_dir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return embed_mod.load_embedder(str(tiny_model_dir), dtype="fp32")


@pytest.fixture
def cfg(tiny_model_dir):
    return IndexConfig(embedding_model=str(tiny_model_dir), chunk_size=64, chunk_overlap=8, dtype="fp32")


@pytest.fixture
def calls(monkeypatch):
    """Count texts sent through the embedding model."""
    seen = []
    real = embed_mod.encode

    def counting(model, texts, *a, **kw):
        seen.append(list(texts))
        return real(model, texts, *a, **kw)

    monkeypatch.setattr(embed_mod, "encode", counting)
    return seen


def write_docs(root: Path, files: dict) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


DOCS = {
    "a.md": "# Alpha\n\nAlpha talks about apples and orchards.\n\n## Details\n\nApples grow on trees.\n",
    "b.txt": "Bananas are yellow fruit grown in the tropics.\n",
    "sub/c.rst": "Cherries\n========\n\nCherries are small red stone fruit.\n",
}


def build(docs, index, cfg, tiny, **kw):
    return build_index(docs, index, cfg, embedder=tiny, progress=False, **kw)


def search_sources(index, tiny, query, k=3):
    with open_index(index) as r:
        q = embed_mod.encode(tiny, [query])
        _, ids = r.vectors.search(q, k)
        return [c.source for c in r.get_chunks([i for i in ids[0] if i >= 0])]


def test_incremental_add_update_delete(tmp_path, cfg, tiny, calls):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, DOCS)
    s = build(docs, index, cfg, tiny)
    assert (s.added, s.updated, s.removed, s.unchanged, s.skipped) == (3, 0, 0, 0, 0)
    assert s.embedded == s.chunks > 0 and s.generation == 1
    with open_index(index) as r:
        before = {c.source: c for c in r.all_chunks()}
        assert r.verify() == []
        assert r.meta.embedding_dim == 32 and r.meta.n_files == 3

    calls.clear()
    (docs / "b.txt").write_text("Blueberries are small blue berries.\n")
    (docs / "sub" / "c.rst").unlink()
    write_docs(docs, {"d.md": "# Dates\n\nDates grow on palm trees in the desert.\n"})
    s = build(docs, index, cfg, tiny)
    assert (s.added, s.updated, s.removed, s.unchanged) == (1, 1, 1, 1)
    embedded_texts = [t for batch in calls for t in batch]
    assert sorted(embedded_texts) == sorted(["Blueberries are small blue berries.",
                                             "# Dates\n\nDates grow on palm trees in the desert."])
    with open_index(index) as r:
        assert r.generation == 2 and r.verify() == []
        chunks = r.all_chunks()
        assert {c.source for c in chunks} == {"a.md", "b.txt", "d.md"}
        # unchanged file keeps its ids, vectors and stable chunk ids
        a_now = [c for c in chunks if c.source == "a.md"]
        assert a_now[0].id == before["a.md"].id or before["a.md"].id in {c.id for c in a_now}
        old_c_id = before["sub/c.rst"].id
        with pytest.raises(RuntimeError):
            r.vectors.reconstruct(old_c_id)  # removed from FAISS (remove_ids)
        assert r.vectors.ntotal == len(chunks)
    assert list_generations(index) == [1, 2]  # the previous generation is kept, older ones collected


def test_no_change_rerun_embeds_nothing_and_loads_no_model(tmp_path, cfg, tiny, calls, monkeypatch):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, {f"f{i:04d}.txt": f"document number {i} about topic {i % 7}\n" for i in range(1000)})
    first = build(docs, index, cfg, tiny)
    assert first.added == 1000
    calls.clear()
    monkeypatch.setattr(embed_mod, "load_embedder", lambda *a, **k: pytest.fail("model loaded on a no-change run"))
    s = build_index(docs, index, cfg, progress=False)  # no embedder passed: it must not be needed
    assert calls == [] and s.embedded == 0
    assert (s.unchanged, s.added, s.updated, s.removed, s.generation) == (1000, 0, 0, 0, 1)
    assert s.seconds < 1.0, s.seconds
    # touching a file without changing it: hashed, still unchanged, still nothing embedded
    os.utime(docs / "f0003.txt", ns=(time.time_ns(), time.time_ns() + 10**9))
    s = build_index(docs, index, cfg, progress=False)
    assert s.unchanged == 1000 and s.generation == 1 and calls == []
    assert build_index(docs, index, cfg, progress=False).generation == 1


def test_identical_chunks_embedded_once(tmp_path, cfg, tiny, calls):
    docs, index = tmp_path / "docs", tmp_path / "index"
    same = "The same paragraph appears in several files.\n"
    write_docs(docs, {"one.txt": same, "two.txt": same, "three.md": "Something else entirely.\n"})
    s = build(docs, index, cfg, tiny)
    assert s.chunks == 3 and s.embedded == 2 and sum(len(b) for b in calls) == 2
    calls.clear()
    write_docs(docs, {"four.txt": same})
    s = build(docs, index, cfg, tiny)
    assert s.added == 1 and s.embedded == 0 and s.reused_vectors == 1 and calls == []
    with open_index(index) as r:
        by_source = {c.source: c.id for c in r.all_chunks()}
        assert np.allclose(r.vectors.reconstruct(by_source["four.txt"]), r.vectors.reconstruct(by_source["one.txt"]))


def test_long_document_chunks_keep_offsets_and_overlap(tmp_path, cfg, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    body = " ".join(f"Sentence {i} talks about item {i}." for i in range(120))
    write_docs(docs, {"long.md": f"# Long\n\n{body}\n"})
    build(docs, index, cfg, tiny)
    text = (docs / "long.md").read_text()
    with open_index(index) as r:
        chunks = r.all_chunks()
    assert len(chunks) > 3
    tok = tiny.tokenizer
    for c in chunks:
        assert text[c.start:c.end] == c.text
        assert len(tok.tokenize(c.text)) <= cfg.chunk_size
        assert c.heading == "Long"
    assert chunks[0].text == "# Long"
    assert all(b.start < a.end for a, b in zip(chunks[1:], chunks[2:]))  # body chunks overlap
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_settings_mismatch_refused_until_rebuild(tmp_path, cfg, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, DOCS)
    build(docs, index, cfg, tiny)
    other = IndexConfig(embedding_model=cfg.embedding_model, chunk_size=128, chunk_overlap=8, dtype="fp32")
    with pytest.raises(IncompatibleIndex, match="chunk_size.*--rebuild"):
        build(docs, index, other, tiny)
    with pytest.raises(IncompatibleIndex, match="embedding_model.*--rebuild"):
        build(docs, index, IndexConfig(embedding_model="all-minilm-l6-v2", chunk_size=64, chunk_overlap=8), tiny)
    with open_index(index) as r:
        assert r.generation == 1 and r.verify() == []
    s = build(docs, index, other, tiny, rebuild=True)
    assert s.added == 3 and s.generation == 2
    with open_index(index) as r:
        assert r.meta.chunk_size == 128


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path, cfg, tiny, monkeypatch):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, {"good.md": "# Good\n\nReadable text.\n", "empty.txt": "   \n"})
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02 not text" * 100)
    (docs / "latin.txt").write_bytes("na\u00efve caf\u00e9".encode("cp1252"))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    (docs / "notes.docx").write_bytes(b"PK\x03\x04")
    with open(docs / "big.md", "wb") as f:
        f.truncate(50 * 2**20)
    os.symlink(tmp_path, docs / "outside")
    os.symlink(docs, docs / "loop")
    write_docs(docs, {"locked.md": "# Locked\n\nsecret\n"})
    import indexer.generation as gen_mod

    real_read = gen_mod.read_file
    monkeypatch.setattr(gen_mod, "read_file", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if p.endswith("locked.md") else real_read(p))
    s = build(docs, index, cfg, tiny)
    reasons = {d["path"]: d["reason"] for d in s.skipped_files}
    assert s.added == 2  # good.md, latin.txt
    assert reasons["binary.txt"].startswith("binary content")
    assert reasons["empty.txt"] == "no text to index"
    assert reasons["broken.pdf"].startswith("unreadable PDF")
    assert reasons["notes.docx"].startswith("unsupported file type")
    assert reasons["big.md"].startswith("too large")
    assert reasons["outside"].startswith("link points outside")
    assert "loop" in reasons["loop"]
    assert reasons["locked.md"] == "unreadable: Permission denied"
    assert s.skipped == len(reasons) == 8 and s.files_seen == 10
    assert any("cp1252" in w["warning"] for w in s.warnings)
    with open_index(index) as r:
        assert r.verify() == [] and {c.source for c in r.all_chunks()} == {"good.md", "latin.txt"}
    # content-skipped files are remembered: the re-run does not re-read them, and still reports them
    s2 = build_index(docs, index, cfg, progress=False)
    assert s2.generation == 1 and s2.skipped == s.skipped and s2.unchanged == 2


def test_failed_build_leaves_no_partial_generation(tmp_path, cfg, tiny, monkeypatch):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, DOCS)
    build(docs, index, cfg, tiny)
    write_docs(docs, {"new.md": "# New\n\nfresh text\n"})
    monkeypatch.setattr(embed_mod, "encode", lambda *a, **k: (_ for _ in ()).throw(MemoryError("out of memory")))
    with pytest.raises(MemoryError):
        build(docs, index, cfg, tiny)
    assert list_generations(index) == [1]
    with open_index(index) as r:
        assert r.generation == 1 and r.verify() == []


def test_missing_and_empty_folder_errors(tmp_path, cfg, tiny):
    with pytest.raises(FileNotFoundError, match="docs folder not found"):
        build(tmp_path / "nope", tmp_path / "index", cfg, tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        build(tmp_path / "empty", tmp_path / "index", cfg, tiny)
    (tmp_path / "empty" / "x.bin").write_bytes(b"1")
    with pytest.raises(ValueError, match="no supported documents"):
        build(tmp_path / "empty", tmp_path / "index", cfg, tiny)


def test_concurrent_build_fails_clearly_or_waits(tmp_path, cfg, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, DOCS)
    with BuildLock(index):
        with pytest.raises(IndexLockedError, match="another build .* is running .*--wait"):
            build(docs, index, cfg, tiny)
    lock = BuildLock(index).__enter__()
    threading.Timer(0.5, lock.__exit__).start()
    t = time.perf_counter()
    s = build(docs, index, cfg, tiny, wait=True)
    assert time.perf_counter() - t >= 0.4 and s.added == 3


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_reports_recall_and_updates(tmp_path, cfg, tiny, calls, kind):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, {f"n{i:03d}.txt": f"note {i}: item {i * 7 % 13} costs {i} coins\n" for i in range(300)})
    build(docs, index, cfg, tiny)
    calls.clear()
    ann = IndexConfig(**{**cfg.to_dict(), "index_type": kind})
    s = build(docs, index, ann, tiny)  # switching type re-uses every vector
    assert calls == [] and s.embedded == 0 and 0.5 <= s.ann_recall_at_10 <= 1.0
    (docs / "n000.txt").unlink()
    write_docs(docs, {"new.txt": "a brand new note about zebras\n", "copy.txt": (docs / "n001.txt").read_text()})
    s = build(docs, index, ann, tiny)
    assert (s.added, s.removed, s.embedded, s.reused_vectors) == (2, 1, 1, 1)
    with open_index(index) as r:
        assert r.meta.index_type == kind and r.verify() == [] and r.vectors.ntotal == 301
        assert search_sources(index, tiny, "a brand new note about zebras", k=1) == ["new.txt"]


CRASH_SCRIPT = """
import sys, time
from pathlib import Path
from indexer import IndexConfig, build_index, embed
real = embed.encode
def slow(model, texts, *a, **kw):
    Path(sys.argv[3]).write_text("embedding")
    time.sleep(120)
    return real(model, texts, *a, **kw)
embed.encode = slow
build_index(sys.argv[1], sys.argv[2], IndexConfig(embedding_model=sys.argv[4], chunk_size=64, chunk_overlap=8,
            dtype="fp32"), progress=False)
"""


def test_sigkill_mid_build_leaves_previous_index_usable(tmp_path, cfg, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, DOCS)
    build(docs, index, cfg, tiny)
    with open_index(index) as r:
        before = [(c.id, c.text) for c in r.all_chunks()]
    write_docs(docs, {"e.md": "# Eggplant\n\nEggplants are purple.\n", "b.txt": "Bananas, changed.\n"})
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(docs), str(index), str(marker),
                             cfg.embedding_model], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    assert len(list_generations(index)) == 2  # the new generation is half-written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_index(index) as r:
        assert r.generation == 1 and r.verify() == []
        assert [(c.id, c.text) for c in r.all_chunks()] == before
    assert search_sources(index, tiny, "Bananas are yellow fruit grown in the tropics.", k=1) == ["b.txt"]
    s = build(docs, index, cfg, tiny)  # the next build cleans up and completes
    assert (s.added, s.updated, s.generation) == (1, 1, 2)
    with open_index(index) as r:
        assert r.verify() == [] and json.loads((index / "CURRENT").read_text())["generation"] == 2
