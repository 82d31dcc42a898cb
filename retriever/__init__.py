"""Retriever: dense / BM25 / hybrid search over an index, and prompt styles.

Light names are imported eagerly; `Searcher` and `SearchConfig` load on first use so
importing `retriever` (e.g. for prompt styles) never pulls in faiss or torch.
"""

from __future__ import annotations

from retriever.answer import ParsedAnswer, drop_restated, parse_answer
from retriever.hit import Hit
from retriever.prompts import STYLES, Prompt, PromptStyle, get_style, register_style, style_name

__all__ = ["Hit", "Prompt", "PromptStyle", "ParsedAnswer", "STYLES", "get_style", "style_name",
           "register_style", "parse_answer", "drop_restated", "ExamplePool", "FewShotConfig", "SearchConfig", "Searcher"]

_LAZY = {"ExamplePool": "retriever.fewshot", "FewShotConfig": "retriever.fewshot",
         "SearchConfig": "retriever.config", "Searcher": "retriever.searcher"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retriever' has no attribute {name!r}")
