"""Query embedding with whatever embedder the caller passes."""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_queries(embedder: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings `(len(texts), dim)`.

    `embedder` is a sentence-transformers model (encoded with `indexer.embed.encode`, the
    same code that embedded the chunks) or any callable `texts -> array`.
    """
    if hasattr(embedder, "encode"):
        try:
            from indexer.embed import encode
        except ImportError:  # indexer without its embedding module (tests of the retriever alone)
            vecs = embedder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)
        else:
            vecs = encode(embedder, texts, batch_size=batch_size, normalize=True)
    elif callable(embedder):
        vecs = embedder(texts)
    else:
        raise TypeError(f"embedder must be a sentence-transformers model or a callable, got {type(embedder).__name__}")
    vecs = np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)
