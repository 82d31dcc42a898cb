"""Read-only view of the live generation of an index."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from indexer import store
from indexer.schema import Chunk, IndexMeta

if TYPE_CHECKING:  # pragma: no cover
    import faiss

    from indexer.bm25 import BM25Index


class IndexNotFound(FileNotFoundError):
    """The folder holds no built index."""


def read_meta(generation_dir: Path) -> IndexMeta:
    return IndexMeta.from_dict(json.loads((Path(generation_dir) / store.META).read_text()))


class IndexReader:
    """The CURRENT generation: FAISS vectors, the chunk store and the BM25 side index.

    Thread-safe for reads. Keeps its generation open even if a newer build switches
    CURRENT meanwhile (the previous generation is kept on disk for that reason).
    """

    def __init__(self, index_dir: Path, generation: int):
        import faiss

        from indexer.ann import get_index_type

        self.dir = Path(index_dir)
        self.generation = generation
        self.path = store.gen_dir(self.dir, generation)
        self.meta = read_meta(self.path)
        self.vectors: "faiss.Index" = faiss.read_index(str(self.path / store.VECTORS))
        get_index_type(self.meta.index_type).configure(self.vectors, self.meta.index_params)
        self._conn = store.open_db(self.path / store.CHUNKS_DB, readonly=True)
        self._lock = threading.Lock()

    @functools.cached_property
    def bm25(self) -> "BM25Index":
        from indexer.bm25 import BM25Index

        return BM25Index(self.path / store.BM25_DIR)

    def get_chunks(self, ids: Sequence[int]) -> list[Chunk]:
        """Chunks for FAISS ids, in the same order; unknown ids (e.g. -1) raise KeyError."""
        with self._lock:
            found = store.get_chunks(self._conn, ids)
        missing = [i for i, c in zip(ids, found) if c is None]
        if missing:
            raise KeyError(f"no chunks with ids {missing[:5]} in {self.path}")
        return found  # type: ignore[return-value]

    @functools.cached_property
    def _all(self) -> list[Chunk]:
        with self._lock:
            return store.all_chunks(self._conn)

    def all_chunks(self) -> list[Chunk]:
        """Every chunk, ordered by id (cached)."""
        return self._all

    def manifest(self) -> dict:
        return json.loads((self.path / store.MANIFEST).read_text())

    def verify(self) -> list[str]:
        """Problems found when cross-checking vectors, chunk store, manifest and BM25 ([] when consistent)."""
        import faiss
        import numpy as np

        problems = []
        vec_ids = set(faiss.vector_to_array(self.vectors.id_map).tolist())
        with self._lock:
            rows = store.source_counts(self._conn)
            db_ids = {r[0] for r in self._conn.execute("SELECT id FROM chunks")}
        if vec_ids != db_ids:
            problems.append(f"{len(vec_ids ^ db_ids)} ids differ between vectors.faiss and chunks.sqlite")
        files = {rel: r for rel, r in self.manifest()["files"].items() if r["skipped"] is None}
        if {rel: r["chunks"] for rel, r in files.items()} != rows:
            problems.append("manifest chunk counts differ from chunks.sqlite")
        if set(np.asarray(self.bm25.ids).tolist()) != db_ids:
            problems.append("BM25 ids differ from chunks.sqlite")
        if self.meta.n_chunks != len(db_ids) or self.meta.n_files != len(files):
            problems.append("meta.json counts differ from the store")
        return problems

    def __len__(self) -> int:
        return int(self.vectors.ntotal)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "IndexReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_index(index_dir: str | Path) -> IndexReader:
    """Open the live generation of `index_dir` (read-only)."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise IndexNotFound(f"no index at {index_dir}; build one with: ragtune index DOCS_DIR --index {index_dir}")
    generation = store.read_current(index_dir)
    if generation is None:
        raise IndexNotFound(f"{index_dir} holds no built index (no CURRENT file); "
                            f"build one with: ragtune index DOCS_DIR --index {index_dir}")
    if not store.gen_dir(index_dir, generation).is_dir():
        raise RuntimeError(f"{index_dir}/CURRENT names generation {generation}, which is missing; "
                           f"rebuild with --rebuild")
    return IndexReader(index_dir, generation)
