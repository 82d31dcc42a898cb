"""On-disk layout of an index: generations, the CURRENT pointer, the build lock, the SQLite store.

    INDEX_DIR/CURRENT          {"generation": 3, "dir": "gen-000003"}, replaced atomically
    INDEX_DIR/.lock            flock'ed by the one build allowed at a time
    INDEX_DIR/gen-000003/      vectors.faiss, chunks.sqlite, manifest.json, meta.json, bm25/

A generation is written completely and fsync'ed before CURRENT names it, so a build
killed at any moment leaves the previous generation untouched and live.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

from indexer.schema import Chunk

CURRENT = "CURRENT"
LOCK = ".lock"
VECTORS = "vectors.faiss"
CHUNKS_DB = "chunks.sqlite"
MANIFEST = "manifest.json"
META = "meta.json"
BM25_DIR = "bm25"
_GEN = re.compile(r"^gen-(\d{6,})$")


class IndexLockedError(RuntimeError):
    """Another build holds the index lock."""


def gen_dir(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / f"gen-{generation:06d}"


def read_current(index_dir: Path) -> int | None:
    """The live generation number, or None when the folder holds no index yet."""
    path = Path(index_dir) / CURRENT
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RuntimeError(f"{path} is unreadable ({err}); rebuild the index with --rebuild") from None
    return int(data["generation"])


def list_generations(index_dir: Path) -> list[int]:
    out = []
    if Path(index_dir).is_dir():
        for p in Path(index_dir).iterdir():
            m = _GEN.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
    return sorted(out)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (and `root` itself)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def switch_current(index_dir: Path, generation: int) -> None:
    """Atomically make `generation` the live one (the commit point of a build)."""
    write_json_atomic(Path(index_dir) / CURRENT, {"generation": generation, "dir": gen_dir(index_dir, generation).name})


def collect_garbage(index_dir: Path, keep: Iterable[int]) -> list[int]:
    """Delete generations not in `keep` (old ones and leftovers of killed builds)."""
    keep = set(keep)
    removed = []
    for g in list_generations(index_dir):
        if g not in keep:
            shutil.rmtree(gen_dir(index_dir, g), ignore_errors=True)
            removed.append(g)
    return removed


class BuildLock:
    """Exclusive `flock` on INDEX_DIR/.lock; released by the OS if the process dies."""

    def __init__(self, index_dir: Path, wait: bool = False):
        self.path = Path(index_dir) / LOCK
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> "BuildLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = self.path.read_text().strip() or "?"
                raise IndexLockedError(f"another build of {self.path.parent} is running (pid {holder}); "
                                       f"wait for it to finish or pass --wait") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ---- SQLite chunk store ---------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL,
    source TEXT NOT NULL,
    file_type TEXT NOT NULL,
    title TEXT NOT NULL,
    heading TEXT NOT NULL,
    page INTEGER,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    text TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(content_hash);
"""
_COLUMNS = 'id, chunk_id, source, file_type, title, heading, page, start, "end", text, content_hash, metadata'


def open_db(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
    return conn


def _row_to_chunk(row: tuple) -> Chunk:
    return Chunk(id=row[0], chunk_id=row[1], source=row[2], file_type=row[3], title=row[4], heading=row[5],
                 page=row[6], start=row[7], end=row[8], text=row[9], content_hash=row[10],
                 metadata=json.loads(row[11]))


def insert_chunks(conn: sqlite3.Connection, chunks: Sequence[Chunk]) -> None:
    conn.executemany(
        f"INSERT INTO chunks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [(c.id, c.chunk_id, c.source, c.file_type, c.title, c.heading, c.page, c.start, c.end, c.text,
          c.content_hash, json.dumps(c.metadata, sort_keys=True)) for c in chunks])


def delete_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    conn.executemany("DELETE FROM chunks WHERE id = ?", [(int(i),) for i in ids])


def ids_for_sources(conn: sqlite3.Connection, sources: Iterable[str]) -> list[int]:
    out: list[int] = []
    for s in sources:
        out.extend(r[0] for r in conn.execute("SELECT id FROM chunks WHERE source = ?", (s,)))
    return out


def id_for_hashes(conn: sqlite3.Connection, hashes: Iterable[str]) -> dict[str, int]:
    """One existing chunk id per content hash (to reuse its vector), for the hashes present."""
    out = {}
    for h in hashes:
        row = conn.execute("SELECT id FROM chunks WHERE content_hash = ? LIMIT 1", (h,)).fetchone()
        if row:
            out[h] = row[0]
    return out


def get_chunks(conn: sqlite3.Connection, ids: Sequence[int]) -> list[Chunk | None]:
    """Chunks in the order of `ids` (None where an id is unknown)."""
    ids = [int(i) for i in ids]
    found: dict[int, Chunk] = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        for row in conn.execute(f"SELECT {_COLUMNS} FROM chunks WHERE id IN ({marks})", part):
            found[row[0]] = _row_to_chunk(row)
    return [found.get(i) for i in ids]


def all_chunks(conn: sqlite3.Connection) -> list[Chunk]:
    return [_row_to_chunk(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM chunks ORDER BY id")]


def ids_and_texts(conn: sqlite3.Connection) -> tuple[list[int], list[str]]:
    rows = conn.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def source_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT source, COUNT(*) FROM chunks GROUP BY source").fetchall())
