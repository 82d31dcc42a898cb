"""`build_index`: scan -> diff with the manifest -> load/chunk/embed what changed -> new generation.

The fast path (nothing changed) reads only the manifest and file stats: no model, no
FAISS, no new generation. Otherwise a new generation is written next to the live one
(vectors of unchanged files reused, identical chunk texts embedded once), fsync'ed,
and only then made live by atomically replacing CURRENT.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from indexer import store
from indexer.config import IndexConfig
from indexer.manifest import FileRecord, Plan, load_manifest, manifest_dict, plan_changes
from indexer.reader import read_meta
from indexer.scan import scan
from indexer.schema import IndexMeta

ProgressFn = Callable[[int, int, str], None]


class IncompatibleIndex(ValueError):
    """The index was built with another model or other chunking settings."""


@dataclass
class BuildSummary:
    files_seen: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    chunks: int = 0
    """Chunks in the index after the build."""
    seconds: float = 0.0
    embedded: int = 0
    """Texts actually run through the embedding model."""
    reused_vectors: int = 0
    """New chunks whose vector was copied from the previous generation (identical text)."""
    generation: int = 0
    index_type: str = "flat"
    ann_recall_at_10: float | None = None
    skipped_files: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    """Seconds per stage: scan, read_chunk, embed, write."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 4)
        d["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return d


def check_compatible(meta: IndexMeta, config: IndexConfig) -> None:
    """Refuse to mix vectors of another model or chunks cut with other settings."""
    from indexer.chunking import CHUNKER_VERSION

    diffs = [f"{name}: index has {getattr(meta, name)!r}, asked for {value!r}"
             for name, value in config.chunking_key().items() if getattr(meta, name) != value]
    if meta.chunker != CHUNKER_VERSION:
        diffs.append(f"chunker: index has {meta.chunker!r}, this ragtune uses {CHUNKER_VERSION!r}")
    if diffs:
        raise IncompatibleIndex("the index was built with different settings (" + "; ".join(diffs) +
                                "); pass --rebuild to re-index everything with the new settings")


def _validate_docs_dir(docs_dir: Path) -> None:
    if not docs_dir.exists():
        raise FileNotFoundError(f"docs folder not found: {docs_dir}")
    if not docs_dir.is_dir():
        raise ValueError(f"not a folder: {docs_dir}")


def build_index(docs_dir: str | Path, index_dir: str | Path, config: IndexConfig | None = None, *, embedder=None,
                models_dir: Path | None = None, rebuild: bool = False, progress: bool = True,
                on_progress: ProgressFn | None = None, wait: bool = False) -> BuildSummary:
    """Build or update the index of `docs_dir` in `index_dir`; return what was done.

    Args:
        embedder: a loaded SentenceTransformer to use instead of loading `config.embedding_model`.
        rebuild: ignore the existing index (and its settings) and index everything again.
        progress: tqdm bars on stderr. on_progress: `(done, total, stage)` callback.
        wait: wait for a concurrent build to finish instead of failing.
    Raises:
        FileNotFoundError / ValueError for a bad docs folder, IncompatibleIndex,
        store.IndexLockedError when another build runs.
    """
    t0 = time.perf_counter()
    config = config or IndexConfig()
    docs_dir, index_dir = Path(docs_dir).expanduser().absolute(), Path(index_dir).expanduser().absolute()
    _validate_docs_dir(docs_dir)
    if index_dir.exists() and not index_dir.is_dir():
        raise ValueError(f"--index must be a folder, {index_dir} is a file")
    report = on_progress or (lambda done, total, stage: None)
    with store.BuildLock(index_dir, wait=wait):
        current = store.read_current(index_dir)
        # leftovers of killed builds: any generation that is not live and not older than it
        store.collect_garbage(index_dir, keep={g for g in store.list_generations(index_dir)
                                                if current is not None and g <= current})
        prev = None if rebuild or current is None else current
        prev_meta = read_meta(store.gen_dir(index_dir, prev)) if prev is not None else None
        if prev_meta is not None:
            check_compatible(prev_meta, config)
        report(0, 1, "scan")
        files, scan_skips = scan(docs_dir, config.max_file_mb, exclude=[index_dir])
        if not files:
            what = "is empty" if not scan_skips else f"has no supported documents ({len(scan_skips)} other files)"
            raise ValueError(f"docs folder {docs_dir} {what}; supported: .md .markdown .txt .rst .html .htm .pdf"
                             + ("; the existing index was left unchanged" if current is not None else ""))
        previous = load_manifest(store.gen_dir(index_dir, prev) / store.MANIFEST) if prev is not None else {}
        plan = plan_changes(files, previous)
        summary = BuildSummary(files_seen=len(files) + len(scan_skips), index_type=config.index_type)
        summary.timings["scan"] = time.perf_counter() - t0
        summary.skipped_files = [{"path": s.rel, "reason": s.reason} for s in scan_skips]
        summary.skipped_files += [{"path": rel, "reason": r} for rel, r in plan.unreadable.items()]
        summary.skipped_files += [{"path": rel, "reason": r} for rel, r in plan.skipped_again.items()]
        same_layout = (prev_meta is not None and prev_meta.index_type == config.index_type
                       and prev_meta.docs_root == str(docs_dir))
        if not plan.has_changes and same_layout:
            if plan.touched:
                store.write_json_atomic(store.gen_dir(index_dir, prev) / store.MANIFEST, manifest_dict(plan.records))
            summary.unchanged = plan.unchanged
            summary.chunks = prev_meta.n_chunks
            summary.generation = prev
            summary.ann_recall_at_10 = prev_meta.ann_recall_at_10
        else:
            from indexer.generation import write_generation

            write_generation(summary, plan, docs_dir, index_dir, prev, prev_meta, config, embedder=embedder,
                             models_dir=models_dir, progress=progress, report=report, reuse_live=same_layout)
        summary.skipped = len(summary.skipped_files)
        summary.skipped_files.sort(key=lambda s: s["path"])
        summary.seconds = time.perf_counter() - t0
        report(1, 1, "done")
        return summary


__all__ = ["BuildSummary", "IncompatibleIndex", "build_index", "check_compatible", "FileRecord", "Plan"]
