"""`ragtune search "query" --index INDEX_DIR -k 5 [--json]`: top-k chunks (dense retrieval)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="show the top-k chunks of an index for a query (no generator)",
                       description="Embed the query with the index's embedding model and print the closest chunks.")
    p.add_argument("query", help="the question or search text")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index folder built by `ragtune index`")
    p.add_argument("-k", type=int, default=5, help="number of chunks (default 5)")
    p.add_argument("--json", action="store_true", help='print {"hits": [...]} as JSON')
    p.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    from indexer import encode, load_embedder, open_index
    from ragtune.settings import Settings

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if not args.query.strip():
        raise ValueError("the query is empty")
    reader = open_index(args.index)
    try:
        model = load_embedder(reader.meta.embedding_model, Settings.from_env().models_dir)
        query = encode(model, [args.query])
        scores, ids = reader.vectors.search(query, min(args.k, max(reader.vectors.ntotal, 1)))
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        chunks = reader.get_chunks([i for i, _ in pairs])
    finally:
        reader.close()
    hits = [{"chunk_id": c.chunk_id, "source": c.source, "score": round(s, 6), "text": c.text,
             "heading": c.heading, "page": c.page} for c, (_, s) in zip(chunks, pairs)]
    if args.json:
        print(json.dumps({"hits": hits}, indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no results (the index is empty)")
    for rank, h in enumerate(hits, 1):
        where = h["source"] + (f" p.{h['page']}" if h["page"] else "") + (f" [{h['heading']}]" if h["heading"] else "")
        text = " ".join(h["text"].split())
        print(f"{rank}. {h['score']:.3f}  {where}\n   {text[:300]}{'...' if len(text) > 300 else ''}")
    return 0
