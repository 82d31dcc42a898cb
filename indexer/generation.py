"""Write one new index generation from the previous one and a change plan (see build.py)."""

from __future__ import annotations

import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from indexer import store
from indexer.chunking import CHUNKER_VERSION, ChunkSpan, chunk_document, content_hash, make_splitter, stable_chunk_id
from indexer.config import IndexConfig
from indexer.loaders import LoadError, load_document
from indexer.manifest import FileRecord, Plan, manifest_dict, read_file, sha256_bytes
from indexer.scan import FileEntry
from indexer.schema import Chunk, Document, IndexMeta

if TYPE_CHECKING:  # pragma: no cover
    from indexer.build import BuildSummary


class _Model:
    """Loads the embedding model on first use only (a build that only deletes never loads it)."""

    def __init__(self, embedder, config: IndexConfig, models_dir: Path | None):
        self._model, self.config, self.models_dir = embedder, config, models_dir

    def get(self):
        if self._model is None:
            from indexer.embed import load_embedder

            self._model = load_embedder(self.config.embedding_model, self.models_dir, dtype=self.config.dtype)
        return self._model


def _folder(rel: str) -> str:
    parent = Path(rel).parent.as_posix()
    return "" if parent == "." else parent


def _load_and_chunk(entries: list[FileEntry], model: _Model, config: IndexConfig, progress: bool,
                    report: Callable) -> tuple[list[tuple[FileEntry, str, Document, list[ChunkSpan]]], dict]:
    """Read, extract and chunk files; return the indexed ones and `{rel: FileRecord}` of skipped ones."""
    done, skipped = [], {}
    if not entries:
        return done, skipped
    splitter = make_splitter(model.get().tokenizer, config.chunk_size, config.chunk_overlap)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc="reading", unit="file", leave=False, file=sys.stderr)
    for n, entry in enumerate(entries, 1):
        try:
            data = read_file(entry.path)
        except OSError as err:
            skipped[entry.rel] = (None, f"unreadable: {err.strerror or err}")
            continue
        digest = sha256_bytes(data)
        try:
            doc = load_document(data, entry.rel)
            spans = chunk_document(doc, splitter)
            if not spans:
                raise LoadError("no text to index")
        except LoadError as err:
            skipped[entry.rel] = (FileRecord(len(data), entry.mtime_ns, digest, entry.file_type, 0, str(err)), str(err))
        else:
            done.append((entry, digest, doc, spans))
        if bar is not None:
            bar.update(1)
        report(n, len(entries), "read")
    if bar is not None:
        bar.close()
    return done, skipped


def write_generation(summary: "BuildSummary", plan: Plan, docs_dir: Path, index_dir: Path, prev: int | None,
                     prev_meta: IndexMeta | None, config: IndexConfig, *, embedder, models_dir, progress: bool,
                     report: Callable, reuse_live: bool = False) -> None:
    """Build generation N+1 and switch CURRENT to it; fills `summary` in place.

    `reuse_live`: the live generation `prev` has the same layout, so if the loaded files
    change no chunks, it is kept (only its manifest learns the new skipped files).
    On any error the half-written generation is deleted and CURRENT is left as it was."""
    live = store.read_current(index_dir)
    new_gen = max(store.list_generations(index_dir) + [live or 0]) + 1
    path = store.gen_dir(index_dir, new_gen)
    path.mkdir(parents=True)
    try:
        _write(summary, plan, docs_dir, index_dir, prev, prev_meta, config, embedder=embedder,
               models_dir=models_dir, progress=progress, report=report, reuse_live=reuse_live,
               live=live, new_gen=new_gen, path=path)
    except BaseException:
        if store.read_current(index_dir) != new_gen:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _write(summary, plan, docs_dir, index_dir, prev, prev_meta, config, *, embedder, models_dir, progress,
           report, reuse_live, live, new_gen, path) -> None:
    import faiss
    import numpy as np

    from indexer import embed as embed_mod
    from indexer.ann import all_vectors, get_index_type, recall_vs_exact
    from indexer.bm25 import build_bm25

    prev_path = store.gen_dir(index_dir, prev) if prev is not None else None
    if prev_path is not None:
        shutil.copyfile(prev_path / store.CHUNKS_DB, path / store.CHUNKS_DB)
    conn = store.open_db(path / store.CHUNKS_DB)
    model = _Model(embedder, config, models_dir)

    # 1. read and chunk new and changed files
    t = time.perf_counter()
    loaded, skipped = _load_and_chunk(plan.new + plan.changed, model, config, progress, report)
    summary.timings["read_chunk"] = time.perf_counter() - t
    records = dict(plan.records)
    changed_rels = {e.rel for e in plan.changed}
    for rel, (record, reason) in skipped.items():
        summary.skipped_files.append({"path": rel, "reason": reason})
        if record is not None:
            records[rel] = record

    # 2. new chunks get fresh ids; old chunks of changed, removed and dropped files go
    next_id = prev_meta.next_id if prev_meta is not None else 0
    chunks: list[Chunk] = []
    for entry, digest, doc, spans in loaded:
        for w in doc.warnings:
            summary.warnings.append({"path": entry.rel, "warning": w})
        for span in spans:
            h = content_hash(span.text)
            chunks.append(Chunk(id=next_id, chunk_id=stable_chunk_id(entry.rel, span.start, h), source=entry.rel,
                                file_type=doc.file_type, title=doc.title, heading=span.heading, page=span.page,
                                start=span.start, end=span.end, text=span.text, content_hash=h,
                                metadata={"dir": _folder(entry.rel)}))
            next_id += 1
        records[entry.rel] = FileRecord(entry.size, entry.mtime_ns, digest, doc.file_type, len(spans), None,
                                        tuple(doc.warnings))
        if entry.rel in changed_rels:
            summary.updated += 1
        else:
            summary.added += 1
    gone = plan.removed + plan.dropped + sorted(changed_rels)
    old_ids = store.ids_for_sources(conn, gone)
    summary.removed = len(plan.removed)
    summary.unchanged = plan.unchanged
    if reuse_live and not chunks and not old_ids:
        # only new unindexable files (binary, unreadable...): no chunk changes, keep the live generation
        conn.close()
        shutil.rmtree(path)
        store.write_json_atomic(prev_path / store.MANIFEST, manifest_dict(records))
        summary.chunks, summary.generation = prev_meta.n_chunks, prev
        summary.ann_recall_at_10 = prev_meta.ann_recall_at_10
        return

    # 3. vectors: reuse any vector whose exact text is already indexed, embed each new text once
    t = time.perf_counter()
    prev_index = faiss.read_index(str(prev_path / store.VECTORS)) if prev_path is not None else None
    if prev_index is not None:
        get_index_type(prev_meta.index_type).configure(prev_index, prev_meta.index_params)
    unique: dict[str, str] = {}
    for c in chunks:
        unique.setdefault(c.content_hash, c.text)
    reuse = store.id_for_hashes(conn, unique) if prev_index is not None else {}
    by_hash = {h: prev_index.reconstruct(int(i)) for h, i in reuse.items()}
    to_embed = [h for h in unique if h not in by_hash]
    dim = prev_index.d if prev_index is not None else None
    if to_embed or dim is None:
        m = model.get()
        model_dim = embed_mod.embedding_dim(m)
        if dim is not None and model_dim != dim:
            raise ValueError(f"embedding model gives {model_dim}-d vectors but the index holds {dim}-d ones; "
                             f"pass --rebuild")
        dim = model_dim
    if to_embed:
        vecs = embed_mod.encode(model.get(), [unique[h] for h in to_embed], batch_size=config.batch_size,
                                progress=progress, callback=lambda d, t: report(d, t, "embed"))
        by_hash.update(zip(to_embed, vecs))
    summary.embedded = len(to_embed)
    summary.reused_vectors = sum(1 for c in chunks if c.content_hash in reuse)
    new_ids = np.array([c.id for c in chunks], dtype=np.int64)
    new_vecs = (np.stack([by_hash[c.content_hash] for c in chunks]).astype(np.float32) if chunks
                else np.zeros((0, dim), np.float32))

    summary.timings["embed"] = time.perf_counter() - t
    t = time.perf_counter()

    # 4. the vector index: in place for flat (remove_ids + add), rebuilt for approximate types
    report(0, 1, "write")
    kind = get_index_type(config.index_type)
    if kind.name == "flat" and prev_index is not None and prev_meta.index_type == "flat":
        index = prev_index
        if old_ids:
            index.remove_ids(np.array(old_ids, dtype=np.int64))
        if len(new_ids):
            index.add_with_ids(new_vecs, new_ids)
    else:
        ids, vecs = all_vectors(prev_index) if prev_index is not None else (np.zeros(0, np.int64), new_vecs[:0])
        keep = ~np.isin(ids, np.array(old_ids, dtype=np.int64))
        ids, vecs = np.concatenate([ids[keep], new_ids]), np.concatenate([vecs[keep], new_vecs])
        index = kind.build(dim, vecs, ids, config)
        if not kind.exact:
            summary.ann_recall_at_10 = round(recall_vs_exact(index, vecs), 4)
    faiss.write_index(index, str(path / store.VECTORS))

    # 5. the chunk store and the BM25 side index, from the same rows
    store.delete_ids(conn, old_ids)
    store.insert_chunks(conn, chunks)
    conn.commit()
    all_ids, texts = store.ids_and_texts(conn)
    conn.close()
    if len(all_ids) != index.ntotal:
        raise RuntimeError(f"internal error: {index.ntotal} vectors but {len(all_ids)} chunks; index not switched")
    build_bm25(texts, np.array(all_ids, dtype=np.int64), path / store.BM25_DIR)

    # 6. manifest and meta, fsync, then switch CURRENT (the commit point) and drop old generations
    n_files = sum(1 for r in records.values() if r.skipped is None)
    meta = IndexMeta(embedding_model=config.embedding_model, embedding_dim=int(dim), chunk_size=config.chunk_size,
                     chunk_overlap=config.chunk_overlap, index_type=kind.name, docs_root=str(docs_dir),
                     built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), n_files=n_files,
                     n_chunks=len(all_ids), generation=new_gen, next_id=next_id, chunker=CHUNKER_VERSION,
                     ann_recall_at_10=summary.ann_recall_at_10, index_params=kind.params(config))
    store.write_json_atomic(path / store.MANIFEST, manifest_dict(records))
    store.write_json_atomic(path / store.META, meta.to_dict())
    store.fsync_tree(path)
    store.fsync_path(index_dir)
    store.switch_current(index_dir, new_gen)
    store.collect_garbage(index_dir, keep={new_gen} | ({live} if live is not None else set()))
    summary.chunks = len(all_ids)
    summary.generation = new_gen
    summary.timings["write"] = time.perf_counter() - t
