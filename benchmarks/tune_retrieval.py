"""Tune BM25 (k1, b, stemming) and the hybrid fusion on SQuADShifts New Wiki, never on SQuAD dev.

Questions: the articles held out from the query-encoder adaptation (recorded in its
READY.json; the same seeded split otherwise). Corpus: all SQuADShifts paragraphs. Prints
JSON with every setting's recall@k / MRR@10 and the best of each family; the best go into
retriever/config.py / indexer/bm25.py defaults and are then reported on dev by
bench_retrieval.py.

    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/tune_retrieval.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retrieval import SHIFTS, cached, corpus_index, log, run_quality  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embedding-model", default="all-minilm-l6-v2")
    p.add_argument("--query-model", default="auto")
    p.add_argument("--skip-bm25", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(2)
    from indexer.bm25 import BM25Config, BM25Index, build_bm25
    from indexer.embed import load_embedder
    from ragtune.settings import Settings
    from retriever import SearchConfig, Searcher
    from retriever.adapt_embedder import split_articles
    from retriever.query_model import resolve_query_model

    models_dir = Settings.from_env().models_dir
    reader, mapping, examples = corpus_index(SHIFTS, "squadshifts", args.embedding_model, models_dir)
    qpath = resolve_query_model(args.query_model, args.embedding_model, models_dir) \
        if args.query_model != "none" else None
    if qpath is not None:
        held = set(json.loads((qpath / "READY.json").read_text())["held_out_articles"])
    else:
        held = split_articles([e.title for e in examples], 0.2, 0)[1]
    exs = [e for e in examples if e.title in held]
    questions, gold = [e.question for e in exs], [e.paragraph_id for e in exs]
    out: dict = {"data": str(SHIFTS), "held_out_articles": len(held), "n_questions": len(exs),
                 "query_model": str(qpath) if qpath else None}
    base = cached(load_embedder(args.embedding_model, models_dir), questions)
    adapted = cached(load_embedder(str(qpath), models_dir), questions) if qpath else None
    s_base = Searcher(reader, embedder=base, config=SearchConfig(query_model=None))
    s_q = Searcher(reader, embedder=adapted or base, config=SearchConfig(query_model=None))

    def q(searcher, **kw):
        t = time.perf_counter()
        r = run_quality(searcher, replace(searcher.config, **kw), questions, gold, mapping)
        log(f"{kw}: r@5 {r['recall@5']} mrr {r['mrr@10']} ({time.perf_counter() - t:.0f} s)")
        return r

    res = {"dense_base": q(s_base, retriever="dense")}
    if adapted is not None:
        res["dense_adapted"] = q(s_q, retriever="dense")

    # BM25 parameters (rebuilt over the same chunks)
    bm25_grid = {}
    best_bm25 = None
    if not args.skip_bm25:
        chunks = reader.all_chunks()
        texts, ids = [c.text for c in chunks], np.array([c.id for c in chunks], np.int64)
        with tempfile.TemporaryDirectory() as tmp:
            for stem in ("english", None):
                for k1 in (0.9, 1.2, 1.5, 2.0):
                    for b in (0.4, 0.6, 0.75, 0.9):
                        cfg = BM25Config(k1=k1, b=b, stemmer=stem)
                        d = Path(tmp) / f"{k1}-{b}-{stem}"
                        build_bm25(texts, ids, d, cfg)
                        s_base.bm25 = BM25Index(d)
                        bm25_grid[f"k1={k1},b={b},stem={stem}"] = r = q(s_base, retriever="bm25")
                        score = r["mrr@10"] + r["recall@5"]
                        if best_bm25 is None or score > best_bm25[0]:
                            best_bm25 = (score, cfg)
        out["bm25_grid"] = bm25_grid
        out["bm25_best"] = {"k1": best_bm25[1].k1, "b": best_bm25[1].b, "stemmer": best_bm25[1].stemmer}
        with tempfile.TemporaryDirectory() as tmp:
            build_bm25(texts, ids, Path(tmp), best_bm25[1])
            s_q.bm25 = BM25Index(Path(tmp))
            s_q._bm25_sorted = np.sort(ids)
            s_q._bm25_order = np.argsort(ids, kind="stable")
            res.update(_fusion_grid(s_q, q))
    else:
        res.update(_fusion_grid(s_q, q))
    out["results"] = res
    fam = {}
    for name, r in res.items():
        key = name.split("(")[0]
        if key not in fam or r["mrr@10"] + r["recall@5"] > fam[key][1]["mrr@10"] + fam[key][1]["recall@5"]:
            fam[key] = (name, r)
    out["best_per_family"] = {k: {"setting": v[0], **v[1]} for k, v in fam.items()}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


def _fusion_grid(s, q) -> dict:
    res = {"bm25_tuned": q(s, retriever="bm25")}
    for w in (0.5, 0.75, 1.0, 1.5, 2.0):
        for rk in (5, 20, 60):
            res[f"rrf(dense_weight={w},rrf_k={rk})"] = q(s, retriever="hybrid", fusion="rrf", dense_weight=w,
                                                         bm25_weight=1.0, rrf_k=rk)
    for norm in ("minmax", "zscore"):
        for w in (0.3, 0.4, 0.5, 0.6, 0.7):
            res[f"convex_{norm}(dense_weight={w})"] = q(s, retriever="hybrid", fusion="convex", normalization=norm,
                                                        dense_weight=w, bm25_weight=round(1 - w, 2))
    return res


if __name__ == "__main__":
    sys.exit(main())
