"""Walk a docs folder safely: supported files with their size and mtime, and the rest with a reason.

Symlinks are followed only while they stay inside the docs root; loops, broken links,
links leaving the root, unreadable folders and oversized files are reported, never
raised. Hidden entries (name starting with ".") and the index folder itself are ignored.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path

from indexer.loaders import file_type


@dataclass(frozen=True)
class FileEntry:
    rel: str
    """Path relative to the docs root, posix style (the path as walked, links not resolved)."""
    path: str
    size: int
    mtime_ns: int
    file_type: str


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan(root: str | Path, max_file_mb: float, exclude: list[str | Path] = ()) -> tuple[list[FileEntry], list[Skipped]]:
    """Return `(files, skipped)` sorted by relative path."""
    root_real = os.path.realpath(root)
    excluded = {os.path.realpath(p) for p in exclude}
    max_bytes = int(max_file_mb * 2**20)
    files: list[FileEntry] = []
    skipped: list[Skipped] = []
    visited: set[tuple[int, int]] = set()
    st = os.stat(root_real)
    visited.add((st.st_dev, st.st_ino))
    stack: list[tuple[str, str]] = [(root_real, "")]
    while stack:
        dir_path, rel_dir = stack.pop()
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            skipped.append(Skipped(rel_dir or ".", f"unreadable folder: {err.strerror or err}"))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append(Skipped(rel.encode("utf-8", "replace").decode("utf-8"), "file name is not valid UTF-8"))
                continue
            try:
                is_link = entry.is_symlink()
                st = os.stat(entry.path)  # follows links
            except OSError as err:
                if err.errno == errno.ELOOP:
                    skipped.append(Skipped(rel, "symlink loop"))
                elif is_link and err.errno == errno.ENOENT:
                    skipped.append(Skipped(rel, "broken symlink"))
                else:
                    skipped.append(Skipped(rel, f"cannot stat: {err.strerror or err}"))
                continue
            real = os.path.realpath(entry.path) if is_link else os.path.join(dir_path, entry.name)
            if is_link and not _inside(real, root_real):
                skipped.append(Skipped(rel, f"link points outside the docs root (-> {real})"))
                continue
            if real in excluded:
                continue
            if stat_mod.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    skipped.append(Skipped(rel, "symlink loop (folder already visited)"))
                    continue
                visited.add(key)
                subdirs.append((real, rel))
                continue
            if not stat_mod.S_ISREG(st.st_mode):
                skipped.append(Skipped(rel, "not a regular file"))
                continue
            kind = file_type(entry.name)
            if kind is None:
                suffix = Path(entry.name).suffix
                skipped.append(Skipped(rel, f"unsupported file type {suffix or '(no extension)'}"))
                continue
            if st.st_size > max_bytes:
                skipped.append(Skipped(rel, f"too large ({st.st_size / 2**20:.1f} MB > {max_file_mb:g} MB limit)"))
                continue
            files.append(FileEntry(rel, os.path.join(dir_path, entry.name), st.st_size, st.st_mtime_ns, kind))
        stack.extend(reversed(subdirs))
    files.sort(key=lambda f: f.rel)
    skipped.sort(key=lambda s: s.rel)
    return files, skipped
