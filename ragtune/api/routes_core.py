"""Health, search, index info, rebuild jobs and adapters."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from . import schemas as S
from .adapters import list_adapters
from .auth import require_admin
from .deps import get_index, get_state
from .errors import ApiError, invalid
from .jobs import JobConflict
from .paths import confine
from .state import AppState, IndexHandle, open_handle

router = APIRouter()


@router.get("/healthz", response_model=S.Health, tags=["health"])
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok", "checks": {}}


@router.get("/readyz", response_model=S.Health, tags=["health"],
            responses={503: {"description": "not ready"}})
def readyz(request: Request, response: Response) -> dict:
    """Readiness: index, embedding model and generator loaded, generation worker alive."""
    state: AppState | None = getattr(request.app.state, "ragtune", None)
    if state is None:
        response.status_code = 503
        return {"status": "starting", "checks": {}}
    checks = {"index": state.index is not None, "embedder": state.embedder is not None,
              "generator": state.generator is not None,
              "worker": state.batcher is not None and state.batcher._thread is not None}
    wanted = {"index": state.config.index_dir is not None, "embedder": state.config.index_dir is not None,
              "generator": state.config.load_generator, "worker": state.config.load_generator}
    ok = all(checks[k] for k, need in wanted.items() if need)
    if not ok:
        response.status_code = 503
    return {"status": "ready" if ok else "not_ready", "checks": checks}


def search_hits(handle: IndexHandle, question: str, top_k: int, filters: dict | None,
                retriever: str | None) -> list:
    """Run one search; a filter or retriever the searcher rejects becomes a 422."""
    try:
        return handle.searcher.search(question, k=top_k, filters=filters, retriever=retriever)
    except (ValueError, KeyError, TypeError) as err:
        field = "filters" if filters else "retriever"
        raise invalid(str(err).strip("'\"") or "invalid search request", field) from None


@router.post("/v1/search", response_model=S.SearchResponse, tags=["search"],
             responses={422: {"description": "invalid request"}})
def search(request: Request, req: S.SearchRequest) -> dict:
    """Top-k chunks for a question, no generation (same fields as `ragtune search --json`)."""
    handle = get_index(request)  # after body validation: a bad request is a 422 even without an index
    hits = search_hits(handle, req.question, req.top_k, req.filters, req.retriever)
    return {"hits": [h.to_dict() for h in hits], "generation": handle.reader.meta.generation}


def index_info(handle: IndexHandle) -> dict:
    meta = handle.reader.meta
    return {"index_dir": str(handle.reader.dir), "documents": meta.n_files, "chunks": meta.n_chunks,
            "embedding_model": meta.embedding_model, "embedding_dim": meta.embedding_dim,
            "built_at": meta.built_at, "generation": meta.generation, "docs_root": meta.docs_root,
            "index_type": meta.index_type, "chunk_size": meta.chunk_size, "chunk_overlap": meta.chunk_overlap}


@router.get("/v1/index", response_model=S.IndexInfo, tags=["index"])
def get_index_info(handle: IndexHandle = Depends(get_index)) -> dict:
    """What the live index holds and when it was built."""
    return index_info(handle)


def docs_roots(state: AppState, handle: IndexHandle) -> list[Path]:
    if state.config.docs_roots:
        return list(state.config.docs_roots)
    root = getattr(handle.reader.meta, "docs_root", None)
    return [Path(root)] if root else []


def rebuild_work(state: AppState, docs_dir: Path, full: bool):
    """The job body: build a new generation, open it, swap it in; returns the summary."""
    def work(report) -> dict:
        from indexer import IndexConfig, build_index

        meta = state.index.reader.meta
        cfg = IndexConfig(embedding_model=meta.embedding_model, chunk_size=meta.chunk_size,
                          chunk_overlap=meta.chunk_overlap, index_type=meta.index_type)
        report(0, 0, "scanning")
        summary = build_index(docs_dir, state.config.index_dir, cfg, embedder=state.embedder,
                              models_dir=state.settings.models_dir, rebuild=full, progress=False,
                              on_progress=report)
        report(1, 1, "swapping")
        new = open_handle(state.config.index_dir, state.embedder, state.settings.models_dir)
        state.swap_index(new)
        out = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
        out["generation"] = new.reader.meta.generation
        return out

    return work


@router.post("/v1/index/rebuild", status_code=202, response_model=S.JobAccepted, tags=["index"],
             dependencies=[Depends(require_admin)],
             responses={400: {"description": "bad path"}, 403: {"description": "path outside the docs roots"},
                        409: {"description": "a rebuild is already running"}})
async def rebuild(request: Request, req: S.RebuildRequest | None = None) -> dict:
    """Start a background rebuild (incremental unless `full`); poll GET /v1/jobs/{id}."""
    state = get_state(request)
    handle = get_index(request)
    req = req or S.RebuildRequest()
    roots = docs_roots(state, handle)
    if req.path is None:
        if not handle.reader.meta.docs_root:
            raise invalid("the index records no docs folder: give a path", "path")
        docs_dir = await run_in_threadpool(confine, handle.reader.meta.docs_root, roots)
    else:
        docs_dir = await run_in_threadpool(confine, req.path, roots)
    try:
        job_id = state.jobs.start("rebuild", rebuild_work(state, docs_dir, req.full), path=str(docs_dir))
    except JobConflict as err:
        raise ApiError(409, "conflict", str(err), {"running_job": err.running_id}) from None
    return {"job_id": job_id, "state": "queued", "status_url": f"/v1/jobs/{job_id}"}


@router.get("/v1/jobs/{job_id}", response_model=S.Job, tags=["index"])
def get_job(job_id: str, state: AppState = Depends(get_state)) -> dict:
    """State, progress and the summary (or error) of a background job."""
    job = state.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return job


@router.get("/v1/adapters", response_model=S.AdaptersResponse, tags=["adapters"],
            dependencies=[Depends(require_admin)])
def adapters(state: AppState = Depends(get_state)) -> dict:
    """Adapters in the adapters folder; pass `adapter` in /v1/ask to use one."""
    found = list_adapters(state.adapters_dir)
    for a in found:
        a["loaded"] = a["name"] in state.loaded_adapters
    return {"adapters_dir": str(state.adapters_dir), "active": state.active_adapter, "adapters": found}
