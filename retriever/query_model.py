"""Adapted query encoders (built by `python -m retriever.adapt_embedder`): find the one
that fits an index's embedding model."""

from __future__ import annotations

import json
from pathlib import Path

QUERY_MODEL_KIND = "query-embedding"


def default_query_model_name(document_model: str) -> str:
    """Folder name of a document model's adapted query encoder: `<model>-query`."""
    return f"{Path(str(document_model).rstrip('/')).name}-query"


def _info(path: Path) -> dict:
    try:
        return json.loads((path / "READY.json").read_text())
    except (OSError, ValueError):
        return {}


def resolve_query_model(name: str | None, document_model: str, models_dir: Path) -> Path | None:
    """The folder of the query encoder to use with an index built by `document_model`.

    `None` / "none": no adapted encoder (queries use the document model). "auto": the
    `<model>-query` folder in `models_dir` if it was built for this document model, else
    None. Anything else: a folder name in `models_dir` or a path, which must exist and
    (when it records one) name the same document model.
    """
    if name in (None, "", "none"):
        return None
    models_dir = Path(models_dir)
    if name == "auto":
        path = models_dir / default_query_model_name(document_model)
        info = _info(path)
        ok = info.get("kind") == QUERY_MODEL_KIND and _same_model(info.get("document_model"), document_model)
        return path if ok else None
    path = Path(name).expanduser()
    if not path.exists():
        path = models_dir / name
    if not path.is_dir():
        raise ValueError(f"query model {name!r} not found (looked for {path}); build one with: "
                         f"python -m retriever.adapt_embedder --data QA_FILE")
    info = _info(path)
    if info.get("document_model") and not _same_model(info["document_model"], document_model):
        raise ValueError(f"query model {name!r} was trained for passages embedded by {info['document_model']!r}, "
                         f"but this index uses {document_model!r}")
    return path


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return a == b or Path(a).name == Path(b).name
