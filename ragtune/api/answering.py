"""retrieve -> prompt -> (queued generation) -> answer object, split around the queue.

`prepare()` runs in a request thread (retrieval + prompt); generation goes through the
batcher; `answer_object()` turns the generation into the same JSON as `ragtune ask --json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, invalid
from .routes_core import search_hits
from .state import AppState

MODES = {"rag": "rag", "closed-book": "closed", "closed": "closed"}


@dataclass
class Prepared:
    question: str
    style: Any
    """retriever.PromptStyle"""
    prompt: Any
    """retriever.Prompt (messages + the numbered sources it includes)"""
    retrieve_ms: float = 0.0
    extra: dict = field(default_factory=dict)


def prepare(state: AppState, question: str, mode: str, style: str, top_k: int,
            filters: dict | None = None, retriever: str | None = None) -> Prepared:
    """Retrieve (RAG mode) and build the prompt. Raises ApiError (422/503) on bad input."""
    from retriever import get_style

    style_obj = get_style(MODES[mode], style)
    hits: list = []
    t0 = time.perf_counter()
    if style_obj.uses_context:
        handle = state.index
        if handle is None:
            raise ApiError(503, "no_index", "no index is loaded: use mode 'closed-book' or start with --index")
        hits = search_hits(handle, question, top_k, filters, retriever)
    retrieve_ms = (time.perf_counter() - t0) * 1000
    examples = None
    if style_obj.few_shot:
        pool = state.example_pool()
        examples = pool.select(question) if pool is not None else None
    tokenizer = getattr(state.generator, "tokenizer", None)
    prompt = style_obj.build(question, sources=hits, examples=examples, tokenizer=tokenizer,
                             context_budget=state.config.context_budget)
    return Prepared(question=question, style=style_obj, prompt=prompt, retrieve_ms=retrieve_ms)


def sources_of(prompt: Any) -> list[dict]:
    """The numbered sources given to the model: n, chunk_id, source, score, text (+ where)."""
    out = []
    for n, hit in enumerate(prompt.sources, 1):
        out.append({"n": n, "chunk_id": hit.chunk_id, "source": hit.source, "score": float(hit.score),
                    "text": hit.text, "title": hit.title, "heading": hit.heading, "page": hit.page})
    return out


def timings_of(prep: Prepared, gen: Any, queue_ms: float | None = None) -> dict:
    gen_ms = float(getattr(gen, "generate_ms", 0.0) or 0.0)
    new = int(getattr(gen, "new_tokens", 0) or 0)
    t = {"retrieve_ms": round(prep.retrieve_ms, 2), "prompt_tokens": int(getattr(gen, "prompt_tokens", 0) or 0),
         "new_tokens": new, "first_token_ms": round(float(getattr(gen, "first_token_ms", 0.0) or 0.0), 2),
         "generate_ms": round(gen_ms, 2), "tokens_per_s": round(new / (gen_ms / 1000), 2) if gen_ms > 0 else 0.0}
    if queue_ms is not None:
        t["queue_ms"] = round(queue_ms, 2)
    return t


def answer_object(prep: Prepared, gen: Any, model: str, adapter: str | None,
                  queue_ms: float | None = None) -> dict:
    """The `ragtune ask --json` object for one generation."""
    parsed = prep.style.parse(gen.text)
    n_sources = len(prep.prompt.sources)
    out = {"answer": parsed.answer}
    if prep.style.cot:
        out["reasoning"] = parsed.reasoning
    out.update({"sources": sources_of(prep.prompt),
                "cited": [n for n in parsed.cited if 1 <= n <= n_sources],
                "model": model, "adapter": adapter, "style": prep.style.name, "raw": gen.text,
                "timings": timings_of(prep, gen, queue_ms)})
    return out


def check_model(state: AppState, model: str | None, field_name: str = "model") -> None:
    """A request may name the loaded model, never another one (no reload per request)."""
    if model is None or state.model_name is None:
        return
    names = {state.model_name, getattr(state.generator, "name", None)}
    if model not in names:
        raise invalid(f"model {model!r} is not loaded; this server runs {state.model_name!r}", field_name)


def check_adapter(state: AppState, adapter: str | None) -> None:
    if adapter is None:
        return
    from .adapters import adapter_path

    adapter_path(state.adapters_dir, adapter)
