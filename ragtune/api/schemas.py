"""Request and response models of the HTTP API (pydantic v2), separate from the routes.

Bounds live here so they show in `/openapi.json` and fail with a 422 before any work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ragtune.pipeline import DEFAULT_K

MAX_QUESTION_CHARS = 4000
MAX_TOP_K = 50
MAX_NEW_TOKENS = 1024
MAX_FILTER_KEYS = 16
MAX_MESSAGES = 64

Mode = Literal["rag", "closed-book"]
Style = Literal["zero-shot", "few-shot", "cot"]
RetrieverName = Literal["dense", "bm25", "hybrid"]
FilterValue = str | int | float | bool | list[str | int | float | bool]


def _question(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("question must not be empty")
    if "\x00" in v:
        raise ValueError("question must not contain NUL characters")
    return v


def _filters(v: dict | None) -> dict | None:
    if v is None:
        return None
    if len(v) > MAX_FILTER_KEYS:
        raise ValueError(f"at most {MAX_FILTER_KEYS} filter keys")
    for key, val in v.items():
        if not key.strip():
            raise ValueError("filter keys must be non-empty")
        if isinstance(val, list) and not val:
            raise ValueError(f"filter {key!r}: an empty list matches nothing")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Strict):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="the query")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="number of chunks to return")
    filters: dict[str, FilterValue] | None = Field(
        None, description="metadata filters applied before ranking, e.g. {\"source\": \"docs/*.md\", \"file_type\": \"md\"}")
    retriever: RetrieverName | None = Field(None, description="dense | bm25 | hybrid (default: the server's)")

    _q = field_validator("question")(_question)
    _f = field_validator("filters")(_filters)


class Hit(BaseModel):
    """One retrieved chunk, the same fields as `ragtune search --json`."""

    model_config = ConfigDict(extra="allow")
    chunk_id: str
    source: str
    score: float
    text: str


class SearchResponse(BaseModel):
    hits: list[Hit]
    generation: int | None = Field(None, description="index generation that answered")


class AskRequest(_Strict):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    mode: Mode = "rag"
    style: Style = "zero-shot"
    top_k: int = Field(DEFAULT_K, ge=1, le=MAX_TOP_K)
    filters: dict[str, FilterValue] | None = None
    retriever: RetrieverName | None = None
    model: str | None = Field(None, max_length=200, description="must name the loaded model (no reload per request)")
    adapter: str | None = Field(None, min_length=1, max_length=200, description="adapter name from GET /v1/adapters")
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    stream: bool = Field(False, description="Server-Sent Events: `token` events, then one `final` event")
    fusion: Literal["joint", "per-source"] | None = Field(
        None, description="rag mode: `per-source` (the default: one prompt per source; the answer with the "
        "highest p(source) x p(answer | source) wins; streamed as one piece) or `joint` (all sources in one "
        "prompt, streamed token by token); closed-book, or top_k above the server's queue size: joint")
    lm_prior: float = Field(0.0, ge=0, le=100, description="per-source: add this x the model's own mean "
                            "log p(question | source) to each source's retrieval score before choosing (UPR "
                            "reranking from the answering prefill; every source is asked). The eval's best "
                            "untuned arm uses 1.0")
    avoid_echo: bool = Field(False, description="per-source: ask again (at most twice, the previous first token "
                             "banned) when a reply only repeats words of the question")

    _q = field_validator("question")(_question)
    _f = field_validator("filters")(_filters)


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")
    n: int
    chunk_id: str
    source: str
    score: float
    text: str


class AskResponse(BaseModel):
    """The same answer object as `ragtune ask --json`."""

    model_config = ConfigDict(extra="allow")
    answer: str
    reasoning: str | None = None
    sources: list[Source]
    cited: list[int]
    model: str
    adapter: str | None = None
    timings: dict[str, Any]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(max_length=4 * MAX_QUESTION_CHARS)


class ChatRequest(BaseModel):
    """OpenAI `chat.completions` request; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(None, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    # ragtune extensions
    top_k: int = Field(DEFAULT_K, ge=1, le=MAX_TOP_K)
    mode: Mode = "rag"
    style: Style = "zero-shot"
    filters: dict[str, FilterValue] | None = None
    adapter: str | None = Field(None, min_length=1, max_length=200)

    _f = field_validator("filters")(_filters)

    @field_validator("messages")
    @classmethod
    def _has_user(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        users = [m for m in v if m.role == "user"]
        if not users:
            raise ValueError("messages must contain a user message")
        last = users[-1].content.strip()
        if not last:
            raise ValueError("the last user message must not be empty")
        if len(last) > MAX_QUESTION_CHARS:
            raise ValueError(f"the last user message must be at most {MAX_QUESTION_CHARS} characters")
        return v


class RebuildRequest(_Strict):
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="docs folder inside RAGTUNE_DOCS_ROOTS (default: the index's docs root)")
    full: bool = Field(False, description="rebuild from scratch instead of updating incrementally")


class JobAccepted(BaseModel):
    job_id: str
    state: str
    status_url: str


class Job(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed"]
    path: str | None = None
    progress: dict[str, Any]
    summary: dict[str, Any] | None = None
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None


class IndexInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    index_dir: str
    documents: int
    chunks: int
    embedding_model: str
    built_at: str | None
    generation: int
    docs_root: str | None = None


class AdapterInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    path: str
    method: str | None = None
    kind: str | None = None
    base_model: str | None = None
    loaded: bool = False


class AdaptersResponse(BaseModel):
    adapters_dir: str
    active: str | None
    adapters: list[AdapterInfo]


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = {}
