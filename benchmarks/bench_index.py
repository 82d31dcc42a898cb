"""Indexing throughput: ragtune's indexer vs the plain baseline, on the 2,067 SQuAD dev paragraphs.

    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/bench_index.py [--repeat 3] [--max-questions N]

ragtune: `build_index` over the paragraphs written as .txt files (scan, read, chunk,
length-sorted embedding in bf16 where the CPU is fast at it, FAISS + SQLite + BM25,
fsync'ed generation). Baseline: the same chunk texts, `SentenceTransformer.encode(
batch_size=32)` in input order, fp32, added to an `IndexFlatIP`. Both get an already
loaded model. Also: recall@5 of both on the SQuAD dev questions (a hit = a chunk of
the gold paragraph in the top 5), the no-change re-index time and the re-index time
after one file changed. Prints JSON (medians over --repeat runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SQUAD_DEV = ROOT.parent / "shared" / "data" / "squad" / "squad-dev-v1.1.json.gz"


def recall_at_5(found_sources: np.ndarray, gold: list[str]) -> float:
    return float(np.mean([g in row for row, g in zip(found_sources, gold)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each side (medians reported)")
    ap.add_argument("--max-questions", type=int, default=0, help="limit the recall questions (0 = all 10,570)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "squad-dev-docs")
    args = ap.parse_args()

    import faiss
    import torch

    from indexer import IndexConfig, build_index, open_index
    from indexer.embed import encode, load_embedder
    from ragtune.device import resolve_dtype
    from ragtune.qadata import load_squad, write_paragraph_docs
    from ragtune.settings import Settings

    torch.set_num_threads(max(1, torch.get_num_threads()))
    paragraphs, examples = load_squad(SQUAD_DEV)
    mapping = write_paragraph_docs(paragraphs, args.work)  # rel path -> paragraph id
    if args.max_questions:
        examples = examples[:args.max_questions]
    models_dir = Settings.from_env().models_dir
    ours = load_embedder("all-minilm-l6-v2", models_dir)  # dtype auto
    plain = load_embedder("all-minilm-l6-v2", models_dir, dtype="fp32")
    warm = [p.text for p in paragraphs[:16]]
    encode(ours, warm)
    plain.encode(warm, batch_size=32)

    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-index-"))
    ours_runs, base_runs = [], []
    try:
        for r in range(args.repeat):
            index_dir = tmp / f"index-{r}"
            t = time.perf_counter()
            summary = build_index(args.work, index_dir, IndexConfig(), embedder=ours, progress=False)
            ours_runs.append((time.perf_counter() - t, summary))
            with open_index(index_dir) as reader:
                chunks = reader.all_chunks()
            texts = [c.text for c in chunks]  # the same chunks, in input (source) order
            t = time.perf_counter()
            vecs = plain.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            flat = faiss.IndexFlatIP(vecs.shape[1])
            flat.add(vecs.astype(np.float32))
            base_runs.append(time.perf_counter() - t)
            print(f"run {r + 1}/{args.repeat}: ragtune {ours_runs[-1][0]:.1f} s, baseline {base_runs[-1]:.1f} s",
                  file=sys.stderr)

        index_dir = tmp / "index-0"
        n_chunks = ours_runs[0][1].chunks
        ours_s = statistics.median(t for t, _ in ours_runs)
        base_s = statistics.median(base_runs)

        # recall@5 on the dev questions, each side with its own vectors and query encoder
        questions = [e.question for e in examples]
        gold = [e.paragraph_id for e in examples]
        with open_index(index_dir) as reader:
            by_id = {c.id: mapping[c.source] for c in reader.all_chunks()}
            _, ids = reader.vectors.search(encode(ours, questions, batch_size=64), 5)
            ours_found = np.array([[by_id.get(int(i), "") for i in row] for row in ids])
            chunk_pids = [mapping[c.source] for c in reader.all_chunks()]
        _, rows = flat.search(plain.encode(questions, batch_size=32, normalize_embeddings=True), 5)
        base_found = np.array([[chunk_pids[i] for i in row] for row in rows])
        ours_recall, base_recall = recall_at_5(ours_found, gold), recall_at_5(base_found, gold)

        # incremental: nothing changed, then one file changed
        no_change = build_index(args.work, index_dir, IndexConfig(), progress=False)
        changed_file = args.work / next(iter(mapping))
        original = changed_file.read_text(encoding="utf-8")
        changed_file.write_text(original + " This sentence was added by the benchmark.", encoding="utf-8")
        try:
            one_changed = build_index(args.work, index_dir, IndexConfig(), embedder=ours, progress=False)
        finally:
            changed_file.write_text(original, encoding="utf-8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = ours_runs[0][1]
    result = {
        "benchmark": "index",
        "dataset": f"SQuAD v1.1 dev: {len(paragraphs)} paragraphs as .txt files, {len(examples)} questions",
        "chunks": n_chunks,
        "repeat": args.repeat,
        "torch_threads": torch.get_num_threads(),
        "ragtune": {"seconds": round(ours_s, 3), "chunks_per_s": round(n_chunks / ours_s, 2),
                    "dtype": str(resolve_dtype("auto")).replace("torch.", ""),
                    "embed_seconds": round(summary.timings.get("embed", 0), 3),
                    "embed_chunks_per_s": round(n_chunks / max(summary.timings.get("embed", 1e-9), 1e-9), 2),
                    "stage_seconds": {k: round(v, 3) for k, v in summary.timings.items()},
                    "embedded": summary.embedded, "recall_at_5": round(ours_recall, 4)},
        "baseline": {"seconds": round(base_s, 3), "chunks_per_s": round(n_chunks / base_s, 2), "dtype": "float32",
                     "recall_at_5": round(base_recall, 4)},
        "speedup": round(base_s / ours_s, 3),
        "recall_at_5_diff": round(ours_recall - base_recall, 4),
        "no_change_reindex_s": round(no_change.seconds, 4),
        "no_change_embedded": no_change.embedded,
        "one_file_changed_reindex_s": round(one_changed.seconds, 3),
        "one_file_changed_embedded": one_changed.embedded,
        "one_file_changed_stage_seconds": {k: round(v, 3) for k, v in one_changed.timings.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
