"""`ragtune index` / `ragtune search` end to end, in subprocesses (tiny model; one real-model integration test)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer_tiny import tiny_model_dir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def ragtune(*args):
    return subprocess.run([sys.executable, "-m", "ragtune", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_bad_folders_are_one_line_errors(tmp_path):
    proc = ragtune("index", tmp_path / "missing", "--index", tmp_path / "idx")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"ragtune index: error: docs folder not found: {tmp_path / 'missing'}"
    proc = ragtune("search", "hello", "--index", tmp_path / "idx")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "no index at" in proc.stderr


def test_index_json_summary_then_search(tmp_path, tiny_model_dir):
    docs, idx = tmp_path / "docs", tmp_path / "idx"
    docs.mkdir()
    (docs / "a.md").write_text("# Apples\n\nApples are crunchy.\n\n## Storage\n\nKeep apples cool.\n")
    (docs / "b.html").write_text("<html><body><script>x()</script><h1>Bees</h1><p>Bees make honey.</p></body></html>")
    (docs / "c.bin").write_bytes(b"\x00")
    proc = ragtune("index", docs, "--index", idx, "--embedding-model", tiny_model_dir, "--dtype", "fp32", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert {"files_seen", "added", "updated", "removed", "unchanged", "skipped", "chunks", "seconds"} <= set(d)
    assert (d["files_seen"], d["added"], d["skipped"], d["chunks"]) == (3, 2, 1, 3)
    assert d["skipped_files"] == [{"path": "c.bin", "reason": "unsupported file type .bin"}]
    # the second run keeps the index's model without repeating it and embeds nothing
    proc = ragtune("index", docs, "--index", idx, "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert (d["unchanged"], d["embedded"], d["generation"]) == (2, 0, 1)
    proc = ragtune("index", docs, "--index", idx, "--chunk-size", "100")
    assert proc.returncode == 1 and "--rebuild" in proc.stderr and "Traceback" not in proc.stderr
    proc = ragtune("search", "Keep apples cool.", "--index", idx, "-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["hits"]
    assert len(hits) == 2
    assert set(hits[0]) >= {"chunk_id", "source", "score", "text"}
    assert hits[0]["source"] == "a.md" and hits[0]["heading"] == "Apples > Storage"
    assert hits[0]["score"] >= hits[1]["score"]


@pytest.mark.integration
def test_real_model_indexes_examples_and_finds_the_answer(tmp_path, models_dir):
    from ragtune import hub

    try:
        hub.resolve("all-minilm-l6-v2", models_dir)
    except hub.ModelNotFound as err:
        pytest.skip(str(err))
    idx = tmp_path / "idx"
    proc = ragtune("index", ROOT / "examples" / "docs", "--index", idx, "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["skipped"] == 0 and d["added"] == d["files_seen"] >= 5
    proc = ragtune("search", "How does ragtune keep the index usable when a rebuild is killed?", "--index", idx,
                   "-k", "3", "--json")
    top = json.loads(proc.stdout)["hits"][0]
    assert top["source"] == "ragtune-overview.md" and top["heading"].endswith("Crash safety")
    from indexer import encode, load_embedder, open_index

    model = load_embedder("all-minilm-l6-v2", models_dir)
    with open_index(idx) as reader:
        for question, source, page in [("What does chain-of-thought prompting ask the model to do?",
                                        "in-context-learning.html", None),
                                       ("exact match and token F1 scores", "evaluating-rag.pdf", 1),
                                       ("What thermodynamic cycle is used to analyze steam engines?", "squad/steam_engine.txt", None)]:
            _, ids = reader.vectors.search(encode(model, [question]), 1)
            top = reader.get_chunks(ids[0])[0]
            assert (top.source, top.page) == (source, page), question


@pytest.mark.integration
def test_real_model_fast_encode_matches_plain_sentence_transformers(models_dir):
    from indexer.embed import encode, load_embedder
    from ragtune import hub
    from ragtune.qadata import load_squad

    try:
        hub.resolve("all-minilm-l6-v2", models_dir)
    except hub.ModelNotFound as err:
        pytest.skip(str(err))
    paragraphs, _ = load_squad(ROOT.parent / "shared" / "data" / "squad" / "squad-dev-v1.1.json.gz")
    texts = [p.text for p in paragraphs[:24]] + ["short", "a b"]
    fp32 = load_embedder("all-minilm-l6-v2", models_dir, dtype="fp32")
    plain = fp32.encode(texts, batch_size=32, normalize_embeddings=True)
    ours = encode(fp32, texts, batch_size=8)
    assert ours.dtype == np.float32 and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert np.abs(ours - plain).max() < 1e-4  # same vectors, same order, despite length-sorted batches
    bf16 = encode(load_embedder("all-minilm-l6-v2", models_dir, dtype="bf16"), texts)
    assert (bf16 * plain).sum(1).min() > 0.99
