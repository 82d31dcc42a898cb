"""Confinement of rebuild paths to the configured docs roots."""

from __future__ import annotations

from pathlib import Path, PurePath

from .errors import ApiError


def confine(path: str, roots: list[Path]) -> Path:
    """Resolve `path` (absolute, or relative to a root) and require it inside a root.

    `..` components are refused outright (400); anything that resolves outside every
    root, symlinks included (resolve() follows them), is 403; a missing folder is 400.
    """
    if not roots:
        raise ApiError(403, "forbidden", "no docs roots are configured (set RAGTUNE_DOCS_ROOTS)")
    if "\x00" in path:
        raise ApiError(400, "bad_path", "path must not contain NUL characters")
    pure = PurePath(path)
    if ".." in pure.parts:
        raise ApiError(400, "bad_path", "path must not contain '..'")
    resolved_roots = [r.expanduser().resolve() for r in roots]
    candidates = [Path(path).expanduser()] if pure.is_absolute() else [r / path for r in resolved_roots]
    found = None
    for cand in candidates:
        try:
            real = cand.resolve(strict=False)
        except (OSError, RuntimeError):  # symlink loop, name too long...
            raise ApiError(400, "bad_path", f"cannot resolve path {_short(path)!r}") from None
        if not any(real.is_relative_to(r) for r in resolved_roots):
            raise ApiError(403, "forbidden", f"path {_short(path)!r} is outside the allowed docs roots")
        try:
            is_dir = real.is_dir()
        except OSError:
            is_dir = False
        if found is None and is_dir:
            found = real
    if found is None:
        raise ApiError(400, "bad_path", f"path {_short(path)!r} is not a folder inside the docs roots")
    return found


def _short(path: str, limit: int = 120) -> str:
    return path if len(path) <= limit else path[:limit] + "..."
