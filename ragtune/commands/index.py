"""`ragtune index DOCS_DIR --index INDEX_DIR`: build or update an index (incremental, atomic)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or update the index of a docs folder (incremental, crash-safe)",
                       description="Index .md .txt .rst .html .pdf files of DOCS_DIR into INDEX_DIR. Re-running "
                       "embeds only new or changed files; a killed run leaves the previous index usable.")
    p.add_argument("docs_dir", metavar="DOCS_DIR", help="folder of documents")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index folder (created if missing)")
    p.add_argument("--chunk-size", type=int, help="tokens per chunk (default 256, or the index's setting)")
    p.add_argument("--chunk-overlap", type=int, help="tokens of overlap (default 32, or the index's setting)")
    p.add_argument("--index-type", choices=["flat", "hnsw", "ivf"],
                   help="vector index: exact flat (default) or approximate hnsw/ivf (recall reported)")
    p.add_argument("--embedding-model", help="embedding preset or local folder (default: RAGTUNE_EMBEDDING_MODEL, "
                   "all-minilm-l6-v2, or the index's model)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="embedding dtype (default auto)")
    p.add_argument("--max-file-mb", type=float, default=20.0, help="skip larger files (default 20)")
    p.add_argument("--rebuild", action="store_true", help="re-index everything (needed to change model or chunking)")
    p.add_argument("--wait", action="store_true", help="wait for a concurrent build instead of failing")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_index)


def _config(args: argparse.Namespace):
    """Explicit flags win; otherwise keep the existing index's settings, else the defaults."""
    from indexer import IndexConfig
    from indexer.reader import read_meta
    from indexer.store import gen_dir, read_current
    from ragtune.settings import Settings

    meta = None
    if not args.rebuild:
        try:
            current = read_current(args.index)
            meta = read_meta(gen_dir(args.index, current)) if current is not None else None
        except (OSError, ValueError, RuntimeError):
            meta = None
    defaults = IndexConfig(embedding_model=Settings.from_env().embedding_model)

    def pick(flag, field):
        if flag is not None:
            return flag
        return getattr(meta, field) if meta is not None else getattr(defaults, field)

    return IndexConfig(embedding_model=pick(args.embedding_model, "embedding_model"),
                       chunk_size=pick(args.chunk_size, "chunk_size"),
                       chunk_overlap=pick(args.chunk_overlap, "chunk_overlap"),
                       index_type=pick(args.index_type, "index_type"), batch_size=args.batch_size,
                       dtype=args.dtype, max_file_mb=args.max_file_mb)


def run_index(args: argparse.Namespace) -> int:
    from indexer import build_index
    from ragtune.settings import Settings

    config = _config(args)
    try:
        summary = build_index(args.docs_dir, args.index, config, models_dir=Settings.from_env().models_dir,
                              rebuild=args.rebuild, progress=not args.no_progress and not args.json,
                              wait=args.wait)
    except OSError as err:
        if err.errno is None:  # our own FileNotFoundError with a full message
            raise
        # disk full, permission denied...: the live index is untouched (the new generation never switched)
        raise RuntimeError(f"{err.strerror or err}: {err.filename or args.index}; the existing index is unchanged") \
            from None
    d = summary.to_dict()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for s in d["skipped_files"]:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    for w in d["warnings"]:
        print(f"warning {w['path']}: {w['warning']}", file=sys.stderr)
    recall = f", recall@10 vs exact {d['ann_recall_at_10']:.3f}" if d["ann_recall_at_10"] is not None else ""
    print(f"indexed {args.docs_dir} -> {args.index} (generation {d['generation']}, {d['index_type']}{recall}): "
          f"{d['files_seen']} files seen, {d['added']} added, {d['updated']} updated, {d['removed']} removed, "
          f"{d['unchanged']} unchanged, {d['skipped']} skipped; {d['chunks']} chunks, "
          f"{d['embedded']} embedded, {d['seconds']:.2f} s")
    return 0
