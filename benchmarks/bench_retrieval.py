"""Retrieval quality and latency on SQuAD dev: dense vs BM25 vs hybrid (ragtune's Searcher),
next to the plain baselines (sentence-transformers encode + IndexFlatIP; plain equal RRF).

Indexes the 2,067 SQuAD dev paragraphs (one .txt document each, via indexer.build_index;
cached under benchmarks/.cache/), asks all 10,565 questions (the question's own
paragraph is its single relevant passage; chunks are mapped back to paragraphs) and
prints JSON: recall@1/5/10/20, MRR@10, nDCG@10 per retriever, p50/p95 single-query
latency (query embedding included) and batched throughput.

Fusion settings are tuned on SQuADShifts New Wiki (held-out articles of the query-model
adaptation), never on dev: `--tune` runs that grid and prints the best settings.

    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/bench_retrieval.py [--limit N] [--tune]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "squad"
DEV = DATA / "squad-dev-v1.1.json.gz"
SHIFTS = DATA / "squadshifts-new_wiki-v1.0.json.gz"
CACHE = ROOT / "benchmarks" / ".cache"
KS = (1, 5, 10, 20)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- corpus + index
def corpus_index(data: Path, name: str, embedding_model: str, models_dir: Path):
    """(IndexReader, {source path: paragraph id}, examples) for a SQuAD-format file."""
    from indexer import IndexConfig, build_index, open_index
    from ragtune.qadata import load_squad, write_paragraph_docs

    paragraphs, examples = load_squad(data)
    docs = CACHE / f"{name}-docs"
    mapping = write_paragraph_docs(paragraphs, docs)
    index_dir = CACHE / f"{name}-index-{Path(embedding_model).name}"
    t = time.perf_counter()
    summary = build_index(docs, index_dir, IndexConfig(embedding_model=embedding_model), models_dir=models_dir,
                          progress=False)
    log(f"{name}: index {index_dir} ({summary.chunks} chunks, {time.perf_counter() - t:.1f} s)")
    return open_index(index_dir), mapping, examples


# --------------------------------------------------------------------------- quality
def paragraph_ranking(hits, mapping: dict[str, str], depth: int = 20) -> list[str]:
    """Chunk hits -> distinct paragraph ids, best first."""
    out: list[str] = []
    for h in hits:
        pid = mapping.get(h.source)
        if pid is not None and pid not in out:
            out.append(pid)
            if len(out) == depth:
                break
    return out


def quality(rankings: list[list[str]], gold: list[str]) -> dict:
    from eval.metrics import mrr_at_k, ndcg_at_k, recall_at_k

    res = {f"recall@{k}": float(np.mean([recall_at_k(r, {g}, k) for r, g in zip(rankings, gold)])) for k in KS}
    res["mrr@10"] = float(np.mean([mrr_at_k(r, {g}, 10) for r, g in zip(rankings, gold)]))
    res["ndcg@10"] = float(np.mean([ndcg_at_k(r, {g}, 10) for r, g in zip(rankings, gold)]))
    return {k: round(v, 4) for k, v in res.items()}


def run_quality(searcher, cfg, questions: list[str], gold: list[str], mapping, batch: int = 256) -> dict:
    chunk_k = 30  # enough chunks for 20 distinct paragraphs (long paragraphs span 2 chunks)
    cfg = replace(cfg, k=chunk_k, candidates=max(cfg.candidates, chunk_k))
    rankings = []
    for s in range(0, len(questions), batch):
        for hits in searcher.search_batch(questions[s:s + batch], **cfg.__dict__):
            rankings.append(paragraph_ranking(hits, mapping))
    return quality(rankings, gold)


def cached(model, texts: list[str]):
    """Embed `texts` once; return a callable embedder serving them from memory (the grid
    re-ranks the same questions many times)."""
    from indexer.embed import encode

    vecs = encode(model, texts, batch_size=64)
    table = {t: v for t, v in zip(texts, vecs)}

    def embed(batch: list[str]):
        missing = [t for t in batch if t not in table]
        if missing:
            table.update(zip(missing, encode(model, missing)))
        return np.stack([table[t] for t in batch])

    return embed


# --------------------------------------------------------------------------- latency
def run_latency(arms: dict, questions: list[str], n_single: int, batch: int = 64) -> dict:
    """Single-query p50/p95 and batched throughput of each arm `name -> (fn_single, fn_batch)`.

    Arms are interleaved query by query (rotating their order), so a busy moment on a
    shared machine hits every arm alike and the ratios stay meaningful."""
    for single, _ in arms.values():
        for q in questions[:5]:
            single(q)  # warm-up
    names = list(arms)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i, q in enumerate(questions[:n_single]):
        for j in range(len(names)):
            n = names[(i + j) % len(names)]
            t = time.perf_counter()
            arms[n][0](q)
            times[n].append((time.perf_counter() - t) * 1000)
    n_batch = min(len(questions), max(batch * 8, n_single))
    out = {}
    for n in names:
        t = time.perf_counter()
        for s in range(0, n_batch, batch):
            arms[n][1](questions[s:s + batch])
        qps = n_batch / (time.perf_counter() - t)
        out[n] = {"p50_ms": round(float(np.percentile(times[n], 50)), 2),
                  "p95_ms": round(float(np.percentile(times[n], 95)), 2),
                  "batched_qps": round(qps, 1), "n_single": len(times[n]), "n_batched": n_batch}
    return out


class PlainDense:
    """The plain baseline: SentenceTransformer.encode + IndexFlatIP search, nothing else."""

    def __init__(self, reader, model):
        import faiss

        self.model = model
        ids = faiss.vector_to_array(reader.vectors.id_map)
        self.flat = faiss.IndexFlatIP(reader.vectors.d)
        self.flat.add(reader.vectors.index.reconstruct_n(0, reader.vectors.ntotal))
        self.ids = ids

    def search(self, queries: list[str], k: int = 5):
        q = self.model.encode(queries, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        _, rows = self.flat.search(np.asarray(q, np.float32), k)
        return self.ids[rows]


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embedding-model", default="all-minilm-l6-v2")
    p.add_argument("--query-model", default="auto",
                   help="adapted query encoder for extra side-by-side arms (auto: <model>-query if built; none)")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions (0 = all)")
    p.add_argument("--latency-queries", type=int, default=300)
    p.add_argument("--tune", action="store_true", help="tune fusion on SQuADShifts held-out articles first")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: best single-query latency on a shared CPU; 2 was 5-8x slower under load)")
    p.add_argument("--latency-only", action="store_true", help="skip the quality table (latency + throughput only)")
    p.add_argument("--quality-only", action="store_true", help="skip latency (quality is not timing-sensitive)")
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from indexer.embed import load_embedder
    from ragtune.settings import Settings
    from retriever import SearchConfig, Searcher
    from retriever.query_model import resolve_query_model

    models_dir = Settings.from_env().models_dir
    CACHE.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "retrieval", "data": str(DEV), "embedding_model": args.embedding_model}

    reader, mapping, examples = corpus_index(DEV, "squad-dev", args.embedding_model, models_dir)
    if args.limit:
        examples = examples[:args.limit]
    questions = [e.question for e in examples]
    gold = [e.paragraph_id for e in examples]
    result.update(n_questions=len(questions), n_paragraphs=len(set(mapping.values())), n_chunks=len(reader))
    base = load_embedder(args.embedding_model, models_dir)
    qpath = None if args.query_model == "none" else resolve_query_model(args.query_model, args.embedding_model,
                                                                        models_dir)
    adapted = load_embedder(str(qpath), models_dir) if qpath else None
    result["query_model"] = str(qpath) if qpath else None

    default = SearchConfig()
    t = time.perf_counter()
    if args.latency_only:
        questions = questions[:max(args.latency_queries, 512) + 5]
    base_c = cached(base, questions)  # quality arms re-rank the same questions: embed each once
    adapted_c = cached(adapted, questions) if adapted is not None else None
    log(f"embedded {len(questions)} questions ({time.perf_counter() - t:.0f} s)")
    arms = {
        "bm25": (base_c, replace(default, retriever="bm25")),
        "dense": (base_c, replace(default, retriever="dense", query_model=None)),
        "hybrid_rrf_equal": (base_c, replace(default, retriever="hybrid", fusion="rrf", dense_weight=1.0,
                                           bm25_weight=1.0, rrf_k=60, query_model=None)),
    }
    arms["hybrid_default"] = (base_c, replace(default, retriever="hybrid"))
    if adapted is not None:  # the same arms with the adapted query encoder, side by side
        arms["dense_adapted_query"] = (adapted_c, replace(default, retriever="dense"))
        arms["hybrid_adapted_query"] = (adapted_c, replace(default, retriever="hybrid"))
    result["default_config"] = default.to_dict()
    table = {}
    for name, (emb, cfg) in ([] if args.latency_only else arms.items()):
        searcher = Searcher(reader, embedder=emb, config=replace(cfg, query_model=None))
        t = time.perf_counter()
        table[name] = run_quality(searcher, searcher.config, questions, gold, mapping)
        log(f"{name}: {table[name]} ({time.perf_counter() - t:.0f} s)")
    if table:
        result["quality"] = table
    result["load_average"] = os.getloadavg()  # latency on a shared machine: read it next to the load

    if args.quality_only:
        reader.close()
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
        return 0
    plain = PlainDense(reader, base)
    timed = {"plain_dense_baseline": (lambda q: plain.search([q]), plain.search)}
    for name in ("bm25", "dense", "hybrid_default"):
        _, cfg = arms[name]
        emb = base  # the real model: query embedding is part of the timed search
        srch = Searcher(reader, embedder=emb, config=replace(cfg, query_model=None))
        timed[name] = (lambda q, s=srch: s.search(q), lambda qs, s=srch: s.search_batch(qs))
    lat = run_latency(timed, questions, args.latency_queries)
    log(f"latency: {lat}")
    lat["hybrid_vs_plain_dense_p50_ratio"] = round(lat["hybrid_default"]["p50_ms"] /
                                                   lat["plain_dense_baseline"]["p50_ms"], 3)
    result["latency"] = lat
    result["load_average_after"] = os.getloadavg()
    result["targets"] = {"hybrid_p50<=12ms": lat["hybrid_default"]["p50_ms"] <= 12.0}
    if not args.latency_only:
        h, b, d = table["hybrid_default"], table["bm25"], table["dense"]
        result["targets"] = {
            "hybrid_recall@5>=0.95": h["recall@5"] >= 0.95, "hybrid_mrr@10>=0.87": h["mrr@10"] >= 0.87,
            "hybrid_beats_bm25_and_dense": all(h[m] > max(b[m], d[m]) for m in ("recall@5", "mrr@10")),
            "hybrid_p50<=12ms": lat["hybrid_default"]["p50_ms"] <= 12.0,
        }
    reader.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
