"""The API's use of `ragtune.pipeline`, split around the generation queue.

`prepare()` runs in a request thread (retrieval + prompt, via `pipeline.prepare`);
generation goes through the batcher; `answer_object()` (`pipeline.answer_object` plus
the time spent queued) gives the same JSON as `ragtune ask --json`.
"""

from __future__ import annotations

from typing import Any

from ragtune import pipeline

from .errors import ApiError, invalid
from .state import AppState

Prepared = pipeline.Prepared


def prepare(state: AppState, question: str, mode: str, style: str, top_k: int,
            filters: dict | None = None, retriever: str | None = None, fusion: str = "joint") -> Prepared:
    """Retrieve (RAG mode) against the live index and build the prompt(s); 422/503 on bad input."""
    if fusion == "per-source" and pipeline.MODES[mode] != "rag":
        raise invalid("fusion per-source needs mode 'rag' (closed-book has no sources)", "fusion")
    options = pipeline.AskOptions(mode=mode, style=style, k=top_k, retriever=retriever, filters=filters,
                                  context_budget=state.config.context_budget, fusion=fusion,
                                  source_temperature=state.config.source_temperature)
    handle = state.index  # one reference read: this request uses one whole index generation
    if pipeline.MODES[mode] == "rag" and handle is None:
        raise ApiError(503, "no_index", "no index is loaded: use mode 'closed-book' or start with --index")
    try:
        return pipeline.prepare(question, options, searcher=handle.searcher if handle else None,
                                pool=state.example_pool(), tokenizer=getattr(state.generator, "tokenizer", None))
    except (ValueError, KeyError) as err:  # a filter or retriever the searcher rejects
        raise invalid(str(err).strip("'\"") or "invalid request", "filters" if filters else "retriever") from None


def answer_object(prep: Prepared, gen: Any, model: str, adapter: str | None,
                  queue_ms: float | None = None) -> dict:
    """The `ragtune ask --json` object (+ `timings.queue_ms`: time waiting for the model)."""
    out = pipeline.answer_object(prep, gen, model, adapter)
    if queue_ms is not None:
        out["timings"]["queue_ms"] = round(max(0.0, queue_ms), 2)
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
