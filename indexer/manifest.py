"""The manifest: one record per file of the docs folder, and the diff of a new scan against it.

Change detection is cheap first: a file whose size and mtime are unchanged is not read
at all. Only when those differ is its content hashed (sha256); a file touched but not
modified is then still "unchanged" (its record just gets the new size/mtime).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from indexer.scan import FileEntry


@dataclass(frozen=True)
class FileRecord:
    size: int
    mtime_ns: int
    sha256: str
    file_type: str
    chunks: int = 0
    skipped: str | None = None
    """Why the file's content could not be indexed (binary, unreadable PDF...); None when indexed."""
    warnings: tuple[str, ...] = ()


@dataclass
class Plan:
    """What a build has to do."""

    records: dict[str, FileRecord] = field(default_factory=dict)
    """Records carried over unchanged (possibly with refreshed size/mtime)."""
    new: list[FileEntry] = field(default_factory=list)
    """Files to load that have no chunks in the index yet."""
    changed: list[FileEntry] = field(default_factory=list)
    """Indexed files whose content changed: old chunks go, the file is loaded again."""
    removed: list[str] = field(default_factory=list)
    """Indexed files that are gone."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """rel -> reason, for files that could not be read while hashing."""
    dropped: list[str] = field(default_factory=list)
    """Indexed files that became unreadable: their chunks go (reported as skipped)."""
    touched: bool = False
    """Some record only needs its size/mtime refreshed (or a vanished skipped file dropped)."""

    @property
    def has_changes(self) -> bool:
        return bool(self.new or self.changed or self.removed or self.dropped)

    @property
    def unchanged(self) -> int:
        return sum(1 for r in self.records.values() if r.skipped is None)

    @property
    def skipped_again(self) -> dict[str, str]:
        return {rel: r.skipped for rel, r in self.records.items() if r.skipped is not None}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_manifest(path: Path) -> dict[str, FileRecord]:
    data = json.loads(Path(path).read_text())
    return {rel: FileRecord(**{**rec, "warnings": tuple(rec.get("warnings", ()))}) for rel, rec in data["files"].items()}


def manifest_dict(records: dict[str, FileRecord]) -> dict:
    return {"version": 1, "files": {rel: asdict(records[rel]) for rel in sorted(records)}}


def plan_changes(files: list[FileEntry], previous: dict[str, FileRecord]) -> Plan:
    """Compare a scan with the previous manifest (empty for a first build)."""
    plan = Plan()
    seen = set()
    for entry in files:
        seen.add(entry.rel)
        old = previous.get(entry.rel)
        if old is None:
            plan.new.append(entry)
            continue
        if old.size == entry.size and old.mtime_ns == entry.mtime_ns and old.file_type == entry.file_type:
            plan.records[entry.rel] = old
            continue
        try:
            digest = sha256_bytes(read_file(entry.path))
        except OSError as err:
            plan.unreadable[entry.rel] = f"unreadable: {err.strerror or err}"
            if old.skipped is None:
                plan.dropped.append(entry.rel)
            continue
        if digest == old.sha256 and old.file_type == entry.file_type:
            plan.records[entry.rel] = replace(old, size=entry.size, mtime_ns=entry.mtime_ns)
            plan.touched = True
        elif old.skipped is not None:
            plan.new.append(entry)
        else:
            plan.changed.append(entry)
    for rel, old in previous.items():
        if rel not in seen:
            if old.skipped is None:
                plan.removed.append(rel)
            else:
                plan.touched = True
    return plan
