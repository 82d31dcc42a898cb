"""`ragtune search "query" --index INDEX_DIR -k 5 [--retriever dense|bm25|hybrid] [--filter KEY=VALUE] [--json]`:
the top-k chunks, no generator."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="show the top-k chunks of an index for a query (no generator)",
                       description="Rank the index's chunks for a query: dense (embeddings), bm25 (words) or "
                       "hybrid (both, fused; the default). Filters select chunks before ranking, so the top-k "
                       "is never starved.")
    p.add_argument("query", help="the question or search text")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index folder built by `ragtune index`")
    p.add_argument("-k", type=int, default=5, help="number of chunks (default 5)")
    p.add_argument("--retriever", choices=["dense", "bm25", "hybrid"], default=None, help="default: hybrid")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="keep only chunks whose KEY matches: source (glob or folder), file_type, title, heading, "
                        "page or any metadata key; repeat a key for OR, different keys AND (e.g. "
                        "--filter file_type=pdf --filter 'source=guides/*')")
    p.add_argument("--mmr", action="store_true", help="re-order with maximal marginal relevance (fewer near-duplicates)")
    p.add_argument("--query-model", default=None,
                   help="adapted query encoder from `python -m retriever.adapt_embedder` (a name or path, or 'auto' = "
                        "<index model>-query if built; default: none, queries use the index's model)")
    p.add_argument("--json", action="store_true", help='print {"hits": [...]} as JSON')
    p.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    from indexer import open_index
    from ragtune.settings import Settings
    from retriever import Searcher
    from retriever.filters import parse_filters

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if not args.query.strip():
        raise ValueError("the query is empty")
    filters = parse_filters(args.filter)
    overrides = {"mmr": True} if args.mmr else {}
    if args.query_model is not None:
        overrides["query_model"] = None if args.query_model == "none" else args.query_model
    reader = open_index(args.index)
    try:
        searcher = Searcher(reader, models_dir=Settings.from_env().models_dir)
        hits = searcher.search(args.query, k=args.k, filters=filters or None, retriever=args.retriever, **overrides)
    finally:
        reader.close()
    if args.json:
        rows = [{**h.to_dict(), "score": round(h.score, 6)} for h in hits]
        print(json.dumps({"hits": rows}, indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no results" + (" (no chunk passes the filters)" if filters else " (the index is empty)"))
    for rank, h in enumerate(hits, 1):
        where = h.source + (f" p.{h.page}" if h.page else "") + (f" [{h.heading}]" if h.heading else "")
        text = " ".join(h.text.split())
        print(f"{rank}. {h.score:.4f}  {where}  ({'+'.join(h.retrievers)})\n   {text[:300]}{'...' if len(text) > 300 else ''}")
    return 0
