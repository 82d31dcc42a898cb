"""The extra RAG wordings the evaluation uses (`rag-span`, `rag-span-few-shot`): they live in
`retriever.prompts` (so the tuner builds training prompts with them too); kept importable here."""

from __future__ import annotations

from retriever.prompts import RagSpan, RagSpanFewShot

STYLE_NAMES = (RagSpan.name, RagSpanFewShot.name)
