"""Adapters on disk: folders under the adapters dir holding `ragtune_adapter.json`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import invalid

MARKER = "ragtune_adapter.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def list_adapters(adapters_dir: Path) -> list[dict]:
    """Every valid adapter folder (sorted by name) with its metadata; unreadable ones are skipped."""
    out = []
    if not adapters_dir.is_dir():
        return out
    for folder in sorted(p for p in adapters_dir.iterdir() if p.is_dir()):
        marker = folder / MARKER
        if not marker.is_file():
            continue
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        out.append({"name": folder.name, "path": str(folder), "method": meta.get("method"),
                    "kind": meta.get("kind"), "base_model": meta.get("base_model"),
                    "recipe": meta.get("recipe") if isinstance(meta.get("recipe"), (str, dict)) else None,
                    "created_at": meta.get("created_at")})
    return out


def adapter_path(adapters_dir: Path, name: str) -> Path:
    """The folder of adapter `name`; 422 when the name is malformed or unknown.

    Names are plain folder names (no separators, no `..`), so a request can never point
    the server at an arbitrary path.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        raise invalid(f"adapter name {name!r} is not valid (letters, digits, '.', '_', '-')", "adapter")
    folder = adapters_dir / name
    if not (folder / MARKER).is_file():
        known = [a["name"] for a in list_adapters(adapters_dir)]
        raise invalid(f"unknown adapter {name!r}; available: {', '.join(known) or 'none'}", "adapter")
    return folder
