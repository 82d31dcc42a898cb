"""Metadata filters, applied before ranking: a filter selects the allowed chunk ids and
each retriever ranks only those, so a filter never starves the top-k.

Filters are `{key: value | [values]}`; values of one key are alternatives (OR), keys
combine with AND. Keys are chunk fields (`source`, `file_type`, `title`, `heading`,
`page`, `chunk_id`) or any key of the chunk's metadata. A value containing `* ? [` is a
glob (`source=guides/*.md`; `*` also crosses `/`); a `source` value without a glob also
matches everything under that folder (`source=guides`).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import numpy as np

FIELDS = ("source", "file_type", "title", "heading", "page", "chunk_id")
_GLOB = set("*?[")


def parse_filters(items: Iterable[str] | None) -> dict[str, list[str]]:
    """`["file_type=pdf", "source=docs/*"]` -> `{"file_type": ["pdf"], "source": ["docs/*"]}`."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"bad filter {item!r}: expected KEY=VALUE (e.g. file_type=pdf or source='docs/*.md')")
        out.setdefault(key, []).append(value)
    return out


def normalize_filters(filters: dict | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A hashable, validated form: ((key, (values...)), ...) sorted by key."""
    if not filters:
        return ()
    if not isinstance(filters, dict):
        raise ValueError(f"filters must be a dict of key -> value(s), got {type(filters).__name__}")
    norm = []
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter keys must be non-empty strings, got {key!r}")
        values = value if isinstance(value, (list, tuple, set)) else [value]
        if not values:
            raise ValueError(f"filter {key!r} has no values")
        norm.append((key, tuple(str(v) for v in values)))
    return tuple(sorted(norm))


def _value(chunk: Any, key: str) -> Any:
    if key in FIELDS:
        return getattr(chunk, key, None)
    return (getattr(chunk, "metadata", None) or {}).get(key)


def _matches_one(key: str, actual: Any, pattern: str) -> bool:
    if actual is None:
        return False
    actual = str(actual)
    if key == "file_type":
        actual, pattern = actual.lower().lstrip("."), pattern.lower().lstrip(".")
    if _GLOB & set(pattern):
        return fnmatch.fnmatchcase(actual, pattern)
    if key == "source":
        folder = pattern.rstrip("/")
        return actual == pattern or actual.startswith(folder + "/")
    return actual == pattern


def chunk_matches(chunk: Any, filters: tuple[tuple[str, tuple[str, ...]], ...]) -> bool:
    """True when the chunk satisfies every key (any of its values)."""
    return all(any(_matches_one(key, _value(chunk, key), p) for p in values) for key, values in filters)


def allowed_ids(chunks: Iterable[Any], filters: tuple[tuple[str, tuple[str, ...]], ...]) -> np.ndarray:
    """Sorted int64 FAISS ids of the chunks that pass `filters`."""
    return np.array(sorted(c.id for c in chunks if chunk_matches(c, filters)), dtype=np.int64)
